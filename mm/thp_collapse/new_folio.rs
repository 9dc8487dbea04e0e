// SPDX-License-Identifier: GPL-2.0

//! The new folio of a collapse, for both backends: allocated where the old pages are, and
//! charged to the memory cgroup, before any lock of the collapse is taken; and the page table
//! an anonymous collapse deposits.

use crate::{
    ffi::{self, CollapseEvent},
    outcome::Fail,
    vocab::{AllocPolicy, PMD_ORDER},
};
use kernel::{
    alloc::{
        flags::{__GFP_RETRY_MAYFAIL, GFP_TRANSHUGE, GFP_TRANSHUGE_LIGHT},
        Flags,
    },
    mm::{
        folio::{NewFolio, Nodes},
        pgtable::NewPteTable,
        Mm,
    },
};

/// The allocation flags of a collapse with `policy`: reclaim and compaction allowed (and
/// retried), or only the light kind.
fn gfp(policy: AllocPolicy) -> Flags {
    match policy {
        AllocPolicy::Reclaim => GFP_TRANSHUGE,
        AllocPolicy::Retry => GFP_TRANSHUGE | __GFP_RETRY_MAYFAIL,
        AllocPolicy::Light | AllocPolicy::NoWait => GFP_TRANSHUGE_LIGHT,
    }
}

/// What an allocation or charge that failed with `policy` reports: `fail`, or for a request
/// that must not block, that it would have had to (reclaim or compact).
fn failed(policy: AllocPolicy, fail: Fail) -> Fail {
    match policy {
        AllocPolicy::NoWait => Fail::WouldBlock,
        AllocPolicy::Reclaim | AllocPolicy::Retry | AllocPolicy::Light => fail,
    }
}

/// Allocates a folio of `order` (2 to the PMD order) for a collapse with `policy`, and
/// charges it to `mm`'s memory cgroup; dropping it frees and uncharges it. It comes from
/// `nodes` (where the scan found most of the range's pages).
///
/// Must be called without the mmap lock: it may enter direct reclaim and compaction (not with
/// [`AllocPolicy::NoWait`], whose failures are [`Fail::WouldBlock`]). May sleep. Upstream:
/// `alloc_charge_folio()`.
pub(crate) fn alloc_charge(
    mm: &Mm,
    policy: AllocPolicy,
    order: u32,
    nodes: &Nodes,
) -> Result<NewFolio, Fail> {
    let order = order.min(PMD_ORDER);
    let gfp = gfp(policy);
    let Ok(folio) = NewFolio::alloc_on(gfp, order, nodes) else {
        ffi::count_collapse_event(order, CollapseEvent::AllocFailed);
        return Err(failed(policy, Fail::AllocHugePage));
    };
    ffi::count_collapse_event(order, CollapseEvent::Alloc);
    if folio.charge(mm, gfp).is_err() {
        return Err(failed(policy, Fail::CgroupCharge));
    }
    if !ffi::memcg_account_collapse_alloc(&folio) {
        return Err(Fail::AllocHugePage);
    }
    Ok(folio)
}

/// Allocates the page table that an anonymous collapse to the PMD order with `policy`
/// deposits in place of the one it detaches, charged to `mm`'s memory cgroup. Whatever the
/// policy it does not invoke the OOM killer (upstream's collapse allocates only the huge
/// folio, which never does); with [`AllocPolicy::Light`] and [`AllocPolicy::NoWait`] it does
/// not reclaim either, as the folio's allocation does not. May sleep; without the mmap lock.
pub(crate) fn alloc_table(mm: &Mm, policy: AllocPolicy) -> Result<NewPteTable<'_>, Fail> {
    let may_reclaim = match policy {
        AllocPolicy::Reclaim | AllocPolicy::Retry => true,
        AllocPolicy::Light | AllocPolicy::NoWait => false,
    };
    NewPteTable::alloc(mm, may_reclaim).map_err(|_| failed(policy, Fail::AllocHugePage))
}
