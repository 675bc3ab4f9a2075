//! What one member should be doing, read off the group state (`Desired`),
//! and the actions that take it from what it is doing to that.
//!
//! Re-evaluating after every commit is idempotent: the node keeps the
//! `Desired` it last acted on, and [`Desired::actions_from`] only emits the
//! differences, stops before starts.

use super::command::ResourceConfig;
use super::ids::{MemberId, ResourceId};
use super::join::Action;
use super::state::{GroupState, ReportedConfig};
use crate::config::NbdAddress;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A resource this member hosts (block 76: "J becomes the host").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hosting {
    /// Host epoch under which it holds the resource.
    pub epoch: u64,
    /// The state does not yet hold this host's configuration (blocks 82–84).
    pub config_pending: bool,
    /// Production resource only: the configuration the group last recorded
    /// for it (from a previous host or epoch), which the disk must match
    /// before it is written to ([`super::takeover`]).
    pub recorded: Option<ReportedConfig>,
}

/// A resource this member can access while another member hosts it
/// (blocks 78–80).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backing {
    /// The host.
    pub host: MemberId,
    /// Its configuration, once the host has sent it.
    pub config: Option<ResourceConfig>,
}

/// A mirroring link seen from one end: the member at the other end and
/// the epoch the pair runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The production host (incoming) or the copy host (outgoing).
    pub peer: MemberId,
    /// Epoch of the pair; replication messages carry it.
    pub epoch: u64,
}

/// Everything one member should be running, as the group state says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Desired {
    /// Disks to hold open, by resource.
    pub hosted: BTreeMap<ResourceId, Hosting>,
    /// Resources this member backs up for another host.
    pub backing: BTreeMap<ResourceId, Backing>,
    /// As production host: copy resources to mirror to, with their host.
    pub mirror_to: BTreeMap<ResourceId, Link>,
    /// As copy host: resources to receive mirrored writes for, with the
    /// production host they come from.
    pub mirror_from: BTreeMap<ResourceId, Link>,
    /// As production host: serve the volume here, under this epoch.
    pub serve: Option<(NbdAddress, u64)>,
}

impl Desired {
    /// What `me` should be doing in `state`. A member that is not joined
    /// should be doing nothing: no disk open, no mirroring, no serving.
    pub fn of(state: &GroupState, me: MemberId) -> Desired {
        let mut d = Desired::default();
        if !state.is_joined(me) {
            return d;
        }
        for (i, (site, r)) in state.domain.sites.iter().zip(&state.resources).enumerate() {
            let resource = site.resource.clone();
            match r.host {
                Some(h) if h == me => {
                    let config_pending = r
                        .config
                        .is_none_or(|c| c.host != me || c.epoch != r.host_epoch);
                    d.hosted.insert(
                        resource,
                        Hosting {
                            epoch: r.host_epoch,
                            config_pending,
                            recorded: if i == 0 { r.config } else { None },
                        },
                    );
                }
                Some(host) if state.subgroups(me).contains(&resource) => {
                    let config = state.current_config(i);
                    d.backing.insert(resource, Backing { host, config });
                }
                _ => {}
            }
        }
        // Mirroring starts once both ends have sent their configuration
        // (blocks 82–84 before 86–96) and the copy can hold the data.
        for pair in state
            .mirrors
            .iter()
            .filter(|p| state.pair_blocked(p).is_none())
        {
            let link = |peer| Link {
                peer,
                epoch: pair.epoch,
            };
            if pair.from == me {
                d.mirror_to.insert(pair.resource.clone(), link(pair.to));
            }
            if pair.to == me {
                d.mirror_from.insert(pair.resource.clone(), link(pair.from));
            }
        }
        // Serve only once this host's configuration is committed (blocks
        // 82–84 before 92–96): the group then knows the disk and the data
        // generation every write will land in, before the first is answered.
        if state.production_host() == Some(me) && state.current_config(0).is_some() {
            let nbd = state.domain.member(me).and_then(|m| m.nbd.clone());
            let epoch = state.resources.first().map_or(0, |r| r.host_epoch);
            d.serve = nbd.map(|a| (a, epoch));
        }
        d
    }

    /// The actions that take a member running `running` to `self`: first
    /// every stop (serving, mirroring, disks), then every start in the
    /// patent's order: open and configure hosted disks (blocks 76, 82–84),
    /// learn backed-up configurations (78–80), expect mirroring as a copy
    /// host (88, 114), start mirroring as production host (96, 120), serve.
    pub fn actions_from(&self, running: &Desired) -> Vec<Action> {
        let mut out = Vec::new();
        if running.serve.is_some() && running.serve != self.serve {
            out.push(Action::StopServing);
        }
        for (resource, link) in &running.mirror_to {
            if self.mirror_to.get(resource) != Some(link) {
                out.push(Action::StopMirroring {
                    resource: resource.clone(),
                    to: link.peer,
                });
            }
        }
        for (resource, link) in &running.mirror_from {
            if self.mirror_from.get(resource) != Some(link) {
                out.push(Action::StopExpecting {
                    resource: resource.clone(),
                    from: link.peer,
                });
            }
        }
        for (resource, h) in &running.hosted {
            if self.hosted.get(resource).map(|n| n.epoch) != Some(h.epoch) {
                out.push(Action::CloseDisk {
                    resource: resource.clone(),
                });
            }
        }
        for (resource, h) in &self.hosted {
            let was = running.hosted.get(resource).filter(|r| r.epoch == h.epoch);
            if was.is_none() {
                out.push(Action::OpenDisk {
                    resource: resource.clone(),
                    epoch: h.epoch,
                    recorded: h.recorded,
                });
            }
            if h.config_pending && !was.is_some_and(|r| r.config_pending) {
                out.push(Action::SendConfig {
                    resource: resource.clone(),
                    epoch: h.epoch,
                });
            }
        }
        for (resource, b) in &self.backing {
            if running.backing.get(resource) == Some(b) {
                continue;
            }
            let resource = resource.clone();
            out.push(match b.config {
                None => Action::AwaitConfig {
                    resource,
                    from: b.host,
                },
                Some(config) => Action::ApplyConfig {
                    resource,
                    from: b.host,
                    config,
                },
            });
        }
        for (resource, link) in &self.mirror_from {
            if running.mirror_from.get(resource) != Some(link) {
                out.push(Action::ExpectMirroring {
                    resource: resource.clone(),
                    from: link.peer,
                    epoch: link.epoch,
                });
            }
        }
        for (resource, link) in &self.mirror_to {
            if running.mirror_to.get(resource) != Some(link) {
                out.push(Action::StartMirroring {
                    resource: resource.clone(),
                    to: link.peer,
                    epoch: link.epoch,
                });
            }
        }
        if let Some((address, epoch)) = &self.serve {
            if running.serve != self.serve {
                out.push(Action::ServeVolume {
                    address: address.clone(),
                    epoch: *epoch,
                });
            }
        }
        out
    }
}
