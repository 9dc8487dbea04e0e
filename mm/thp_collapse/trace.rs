// SPDX-License-Identifier: GPL-2.0

//! Upstream's collapse tracepoints (`huge_memory` events), fired where upstream fires them,
//! with the same fields, so that tools reading them see no difference between the cores.
//!
//! The events are defined in C (`include/trace/events/huge_memory.h`, created in
//! `mm/khugepaged.c`); the forwarders are in `mm/thp_collapse_glue.c`. A disabled event costs
//! one call and a static-key test.

use super::outcome::Outcome;
use kernel::{bindings, mm::Mm};

/// The pfn the events record when there is no folio.
pub(crate) const NO_PFN: usize = usize::MAX;

fn status(outcome: Outcome) -> i32 {
    outcome as i32
}

fn count(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// `mm_khugepaged_scan_pmd`: the end of the scan of a PMD range, with the final result (that
/// of the collapse, if one followed). `pfn` is the folio the scan stopped at, or [`NO_PFN`].
pub(crate) fn scan_pmd(
    mm: &Mm,
    pfn: usize,
    referenced: u32,
    none_or_zero: u32,
    outcome: Outcome,
    unmapped: u32,
) {
    // SAFETY: `mm` is valid; the event only records its address and the values.
    unsafe {
        bindings::thp_collapse_trace_scan_pmd(
            mm.as_raw(),
            pfn,
            count(referenced),
            count(none_or_zero),
            status(outcome),
            count(unmapped),
        )
    }
}

/// `mm_collapse_huge_page`: the end of the collapse of one candidate into a folio of `order`.
pub(crate) fn collapse(mm: &Mm, outcome: Outcome, order: u32) {
    // SAFETY: As above.
    unsafe {
        bindings::thp_collapse_trace_collapse(
            mm.as_raw(),
            (outcome == Outcome::Succeed).into(),
            status(outcome),
            order,
        )
    }
}

/// `mm_collapse_huge_page_isolate`: the end of the isolation step. `pfn` is the last folio
/// looked at, or [`NO_PFN`].
pub(crate) fn isolate(
    pfn: usize,
    none_or_zero: u32,
    referenced: u32,
    outcome: Outcome,
    order: u32,
) {
    // SAFETY: The forwarder only records the values.
    unsafe {
        bindings::thp_collapse_trace_isolate(
            pfn,
            count(none_or_zero),
            count(referenced),
            status(outcome),
            order,
        )
    }
}

/// `mm_collapse_huge_page_swapin`: the end of the swap-in step.
pub(crate) fn swapin(mm: &Mm, swapped_in: u32, referenced: u32, outcome: Outcome, order: u32) {
    // SAFETY: `mm` is valid; the event only records its address and the values.
    unsafe {
        bindings::thp_collapse_trace_swapin(
            mm.as_raw(),
            count(swapped_in),
            count(referenced),
            status(outcome),
            order,
        )
    }
}
