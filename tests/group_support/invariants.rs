//! Invariants of the group state and of the actions `step` derives from
//! it, checked after every command by the simulated cluster and the
//! property test.

use geomirror::group::{Action, GroupState, MemberId};

/// The state's own invariants: hosts are joined members of their subgroup;
/// a resource with a joined member in its subgroup has a host; mirroring
/// runs exactly from the production host to every hosted copy.
pub fn check_state(s: &GroupState) {
    for (site, r) in s.domain.sites.iter().zip(&s.resources) {
        match r.host {
            Some(h) => {
                assert!(
                    s.is_joined(h),
                    "host {h} of {} is not joined",
                    site.resource
                );
                assert!(
                    s.subgroups(h).contains(&site.resource),
                    "host outside subgroup"
                );
                assert!(r.host_epoch <= s.epoch);
            }
            None => {
                let candidate = s
                    .domain
                    .member_ids()
                    .find(|&m| s.is_joined(m) && s.subgroups(m).contains(&site.resource));
                assert_eq!(candidate, None, "{} has no host but could", site.resource);
            }
        }
    }
    let mut want = Vec::new();
    if let Some(p) = s.production_host() {
        for (site, r) in s.domain.sites.iter().zip(&s.resources).skip(1) {
            if let Some(c) = r.host {
                let epoch = s.resources[0].host_epoch.max(r.host_epoch);
                want.push((site.resource.clone(), p, c, epoch));
            }
        }
    }
    let have: Vec<_> = s
        .mirrors
        .iter()
        .map(|p| (p.resource.clone(), p.from, p.to, p.epoch))
        .collect();
    assert_eq!(have, want, "mirroring pairs");
}

/// Every action `me` takes is backed by the state it was computed from.
pub fn check_actions(s: &GroupState, me: MemberId, actions: &[Action]) {
    for a in actions {
        match a {
            Action::OpenDisk {
                resource, epoch, ..
            }
            | Action::SendConfig { resource, epoch } => {
                let (i, r) = s.resource(resource).expect("known resource");
                assert_eq!(r.host, Some(me), "{a:?} by a non-host");
                assert_eq!(r.host_epoch, *epoch);
                if let Action::OpenDisk { recorded, .. } = a {
                    // The production disk is checked against the group's
                    // last record; a copy disk against nothing.
                    let want = if i == 0 { r.config } else { None };
                    assert_eq!(*recorded, want, "{a:?}: not the recorded configuration");
                }
            }
            Action::StartMirroring { resource, to, .. } => {
                let pair = s.mirrors.iter().find(|p| &p.resource == resource);
                let pair = pair.expect("a mirroring pair exists");
                assert_eq!(s.pair_blocked(pair), None, "{a:?} on a blocked pair");
                let (i, _) = s.resource(resource).expect("known resource");
                assert!(i > 0, "mirroring to the production resource");
                assert_eq!(
                    s.production_host(),
                    Some(me),
                    "{a:?} not from production host"
                );
                assert_eq!(s.host(resource), Some(*to), "{a:?} to a non-host");
            }
            Action::ExpectMirroring { resource, from, .. } => {
                let pair = s.mirrors.iter().find(|p| &p.resource == resource);
                let pair = pair.expect("a mirroring pair exists");
                assert_eq!(s.pair_blocked(pair), None, "{a:?} on a blocked pair");
                assert_eq!(s.host(resource), Some(me), "{a:?} on a non-host");
                assert_eq!(s.production_host(), Some(*from));
            }
            Action::ServeVolume { .. } => {
                assert_eq!(s.production_host(), Some(me));
                // Blocks 82–84 before serving: the group holds this host's
                // configuration (its disk and generation) under its epoch.
                assert!(
                    s.current_config(0).is_some(),
                    "{a:?} before the host's configuration is committed"
                );
            }
            Action::AwaitConfig { resource, from } | Action::ApplyConfig { resource, from, .. } => {
                assert_eq!(s.host(resource), Some(*from));
                assert!(s.subgroups(me).contains(resource));
            }
            Action::CloseDisk { .. }
            | Action::StopMirroring { .. }
            | Action::StopExpecting { .. }
            | Action::StopServing
            | Action::Propose(_) => {}
        }
    }
}
