//! Which drawn faults a world keeps: those that can be told apart from
//! the faults already drawn, and that with them never fail a whole target.

use std::collections::BTreeSet;

use super::{Cause, Unit, World, WorldFault};

impl World {
    /// Whether `fault` can be told apart from those already drawn: it
    /// fails probes of at least two vantages, is not the same cause as
    /// another, while both are on neither's failing probes on a shared
    /// target lie inside the other's (a /24 inside a failing region is
    /// invisible, whatever the detector does). See also
    /// [`World::covers_a_target`].
    pub(super) fn fits(&self, fault: &WorldFault) -> bool {
        let units = self.fault_units(fault);
        let vantages: BTreeSet<usize> = units.iter().map(|u| u.1).collect();
        if vantages.len() < 2 {
            return false;
        }
        for other in &self.faults {
            if other.key(self) == fault.key(self) {
                return false;
            }
            let overlap = other.start < fault.end && fault.start < other.end;
            if !overlap {
                continue;
            }
            let theirs = self.fault_units(other);
            let targets: BTreeSet<usize> = units.iter().map(|u| u.0).collect();
            for t in targets {
                let a: BTreeSet<&Unit> = units.iter().filter(|u| u.0 == t).collect();
                let b: BTreeSet<&Unit> = theirs.iter().filter(|u| u.0 == t).collect();
                if b.is_empty() {
                    continue;
                }
                if a.is_subset(&b) || b.is_subset(&a) {
                    return false;
                }
            }
        }
        true
    }

    /// Whether, in some round of `fault`, it and the faults on beside it
    /// fail every probe of one target: that target then fails everywhere,
    /// which no observer can tell from an outage (a region and the edge
    /// location serving every other region, at once).
    pub(super) fn covers_a_target(&self, fault: &WorldFault) -> bool {
        let units = self.fault_units(fault);
        if fault.cause == Cause::Global {
            // An outage, as drawn (any fault beside it on its target lies
            // inside it, and was not drawn).
            return false;
        }
        let others: Vec<(u64, u64, BTreeSet<Unit>)> = self
            .faults
            .iter()
            .map(|f| (f.start, f.end, self.fault_units(f)))
            .collect();
        let targets: BTreeSet<usize> = units.iter().map(|u| u.0).collect();
        targets.into_iter().any(|t| {
            let all = self.targets[t].1.len() * self.vantages.len();
            (fault.start..fault.end).any(|r| {
                let mut failing: BTreeSet<&Unit> = units.iter().filter(|u| u.0 == t).collect();
                for (start, end, theirs) in &others {
                    if (*start..*end).contains(&r) {
                        failing.extend(theirs.iter().filter(|u| u.0 == t));
                    }
                }
                failing.len() >= all
            })
        })
    }
}
