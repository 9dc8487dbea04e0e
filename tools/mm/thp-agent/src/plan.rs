//! Range planning: which aligned chunks of a process to collapse, and in
//! which order.
//!
//! A chunk is `2^order` pages (2 MiB at the PMD order), aligned to its size,
//! and lies entirely inside one VMA (and inside `--range` when given): the
//! kernel can only map a huge page where the whole aligned chunk belongs to
//! one VMA.

use crate::damon::Region;
use crate::pagemap::HugeMap;
use crate::smaps::Vma;
use serde::{Deserialize, Serialize};

/// Which VMAs of the process to plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every THP-eligible VMA.
    All,
    /// The VMAs overlapping `[start, end)`, clipped to it.
    Range {
        /// First address.
        start: u64,
        /// End address (exclusive).
        end: u64,
    },
    /// The VMAs whose display name contains this text (`[heap]`, `libfoo.so`, `[anon:arena]`).
    VmaName(String),
}

impl Selection {
    /// The part of `vma` this selection covers, or `None` if it does not select it.
    fn clip(&self, vma: &Vma) -> Option<(u64, u64)> {
        match self {
            Selection::All => Some((vma.start, vma.end)),
            Selection::Range { start, end } => {
                let (s, e) = (vma.start.max(*start), vma.end.min(*end));
                (s < e).then_some((s, e))
            }
            Selection::VmaName(name) => vma
                .display_name()
                .contains(name.as_str())
                .then_some((vma.start, vma.end)),
        }
    }
}

/// The aligned chunks of `size` bytes (a power of two) lying entirely inside `[start, end)`.
pub fn aligned_chunks(start: u64, end: u64, size: u64) -> impl Iterator<Item = (u64, u64)> {
    debug_assert!(size.is_power_of_two());
    let first = start.checked_next_multiple_of(size).unwrap_or(u64::MAX);
    let last = end - end % size;
    let count = if first < last {
        (last - first) / size
    } else {
        0
    };
    (0..count).map(move |i| (first + i * size, first + (i + 1) * size))
}

/// Bytes of `vma` that PMD-sized huge pages could map: the aligned 2 MiB
/// chunks inside it, if smaps says it is THP-eligible, else 0.
pub fn pmd_capacity(vma: &Vma, pmd_size: u64) -> u64 {
    if !vma.is_thp_eligible() {
        return 0;
    }
    aligned_chunks(vma.start, vma.end, pmd_size)
        .map(|(s, e)| e - s)
        .sum()
}

/// How a planned range starts out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Initial {
    /// To be collapsed.
    Collapse,
    /// Already PMD-mapped when planned: skipped, not collapsed again.
    AlreadyHuge,
}

/// One chunk of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedRange {
    /// First address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// Display name of the VMA the chunk is in.
    pub vma: String,
    /// Whether it still needs a collapse.
    pub initial: Initial,
}

/// A VMA the selection picked but that yields no chunk, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Display name of the VMA.
    pub vma: String,
    /// First address of the VMA.
    pub start: u64,
    /// End of the VMA (exclusive).
    pub end: u64,
    /// Why it yields no chunk.
    pub why: SkipReason,
}

/// Why a selected VMA yields no chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// smaps says `THPeligible: 0`.
    NotEligible,
    /// No aligned chunk fits inside (the selected part of) the VMA.
    TooSmall,
}

/// The result of planning.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The chunks, in address order.
    pub ranges: Vec<PlannedRange>,
    /// Selected VMAs that yield no chunk.
    pub skipped: Vec<Skipped>,
}

/// What to plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    /// Which VMAs.
    pub selection: Selection,
    /// Chunk size in bytes, a power of two (2 MiB at the PMD order).
    pub chunk_size: u64,
    /// Also plan VMAs whose smaps says `THPeligible: 0`: MADV_COLLAPSE ignores
    /// the sysfs THP mode that `THPeligible` reflects, and the kernel decides.
    pub include_ineligible: bool,
}

/// Plans the chunks of `vmas` selected by `opts`. Chunks that `huge` covers
/// entirely are marked [`Initial::AlreadyHuge`].
pub fn plan(vmas: &[Vma], opts: &PlanOptions, huge: &HugeMap) -> Plan {
    let mut out = Plan::default();
    for vma in vmas {
        let Some((start, end)) = opts.selection.clip(vma) else {
            continue;
        };
        let skip = |why| Skipped {
            vma: vma.display_name().to_string(),
            start: vma.start,
            end: vma.end,
            why,
        };
        if !vma.is_thp_eligible() && !opts.include_ineligible {
            out.skipped.push(skip(SkipReason::NotEligible));
            continue;
        }
        let before = out.ranges.len();
        out.ranges.extend(
            aligned_chunks(start, end, opts.chunk_size).map(|(s, e)| PlannedRange {
                start: s,
                end: e,
                vma: vma.display_name().to_string(),
                initial: if huge.covers(s, e) {
                    Initial::AlreadyHuge
                } else {
                    Initial::Collapse
                },
            }),
        );
        if out.ranges.len() == before {
            out.skipped.push(skip(SkipReason::TooSmall));
        }
    }
    out
}

/// A chunk that DAMON saw accessed, with its hotness.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotRange {
    /// First address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// Display name of the VMA the chunk is in.
    pub vma: String,
    /// Average DAMON `nr_accesses` over the chunk's pages, rounded down
    /// (pages no region covers count as 0).
    pub hotness: u32,
    /// The largest `age` of the regions overlapping the chunk.
    pub age: u32,
}

impl HotRange {
    /// The chunk as a range for the collapse loop.
    pub fn planned(&self) -> PlannedRange {
        PlannedRange {
            start: self.start,
            end: self.end,
            vma: self.vma.clone(),
            initial: Initial::Collapse,
        }
    }
}

/// What [`plan_hot`] looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HotOptions {
    /// The hotness a chunk needs to be collapsed.
    pub min_hotness: u32,
    /// Chunk size in bytes, a power of two (2 MiB at the PMD order).
    pub chunk_size: u64,
    /// Also plan VMAs whose smaps says `THPeligible: 0` (see
    /// [`PlanOptions::include_ineligible`]).
    pub include_ineligible: bool,
}

/// The chunks DAMON saw accessed, by what is to be done with them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HotPlan {
    /// Hot enough and not PMD-mapped: to be collapsed, hottest first, then
    /// oldest (hot for longest), then by address.
    pub hot: Vec<HotRange>,
    /// Accessed, but less than `min_hotness`: left alone, in address order.
    pub cold: Vec<HotRange>,
    /// Bytes of hot chunks that are PMD-mapped already.
    pub hot_huge_bytes: u64,
}

/// Turns DAMON regions into aligned chunks of the VMAs they overlap. A chunk
/// counts if it lies entirely inside a VMA that is THP-eligible (or any VMA
/// with `include_ineligible`) and DAMON saw it accessed (hotness above 0).
pub fn plan_hot(regions: &[Region], vmas: &[Vma], huge: &HugeMap, opts: &HotOptions) -> HotPlan {
    let mut sorted: Vec<&Region> = regions.iter().filter(|r| r.start < r.end).collect();
    sorted.sort_unstable_by_key(|r| r.start);

    let chunk_size = opts.chunk_size;
    let mut out = HotPlan::default();
    for vma in vmas
        .iter()
        .filter(|v| opts.include_ineligible || v.is_thp_eligible())
    {
        for (s, e) in aligned_chunks(vma.start, vma.end, chunk_size) {
            let first = sorted.partition_point(|r| r.end <= s);
            let overlapping = sorted[first..].iter().take_while(|r| r.start < e);
            let (mut weighted, mut age) = (0u128, 0u32);
            for r in overlapping {
                let bytes = r.end.min(e) - r.start.max(s);
                weighted += u128::from(r.nr_accesses) * u128::from(bytes);
                age = age.max(r.age);
            }
            let hotness = u32::try_from(weighted / u128::from(chunk_size)).unwrap_or(u32::MAX);
            if hotness == 0 {
                continue;
            }
            let chunk = HotRange {
                start: s,
                end: e,
                vma: vma.display_name().to_string(),
                hotness,
                age,
            };
            if hotness < opts.min_hotness {
                out.cold.push(chunk);
            } else if huge.covers(s, e) {
                out.hot_huge_bytes += e - s;
            } else {
                out.hot.push(chunk);
            }
        }
    }
    out.hot.sort_by(|a, b| {
        b.hotness
            .cmp(&a.hotness)
            .then(b.age.cmp(&a.age))
            .then(a.start.cmp(&b.start))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smaps;

    const MIB: u64 = 1 << 20;
    const PMD: u64 = 2 * MIB;

    fn vma(start: u64, end: u64, name: &str, eligible: bool) -> Vma {
        Vma {
            start,
            end,
            perms: "rw-p".into(),
            raw_name: name.into(),
            thp_eligible: Some(eligible),
            ..Vma::default()
        }
    }

    fn opts(selection: Selection) -> PlanOptions {
        PlanOptions {
            selection,
            chunk_size: PMD,
            include_ineligible: false,
        }
    }

    fn starts(p: &Plan) -> Vec<u64> {
        p.ranges.iter().map(|r| r.start).collect()
    }

    #[test]
    fn chunks_are_aligned_and_inside() {
        let c: Vec<_> = aligned_chunks(0x1000, 0x7ff000, PMD).collect();
        assert_eq!(c, [(0x200000, 0x400000), (0x400000, 0x600000)]);
        assert_eq!(aligned_chunks(0x200000, 0x3ff000, PMD).count(), 0);
        assert_eq!(aligned_chunks(0x200000, 0x400000, PMD).count(), 1);
        assert_eq!(aligned_chunks(0x201000, 0x202000, PMD).count(), 0);
    }

    #[test]
    fn capacity_follows_eligibility_and_alignment() {
        let vmas = smaps::parse(smaps::tests::FIXTURE).unwrap();
        let caps: Vec<u64> = vmas.iter().map(|v| pmd_capacity(v, PMD)).collect();
        // file (ineligible), unaligned anon (ineligible), heap 8 MiB aligned,
        // arena 5 MiB at an aligned start (2 chunks), memfd 4 MiB, stack (ineligible).
        assert_eq!(caps, [0, 0, 8 * MIB, 4 * MIB, 4 * MIB, 0]);
    }

    #[test]
    fn plans_all_eligible_vmas_from_fixture() {
        let vmas = smaps::parse(smaps::tests::FIXTURE).unwrap();
        let p = plan(&vmas, &opts(Selection::All), &HugeMap::new());
        assert_eq!(
            starts(&p),
            [
                0x7f0000600000,
                0x7f0000800000,
                0x7f0000a00000,
                0x7f0000c00000,
                0x7f0001000000,
                0x7f0001200000,
                0x7f0002000000,
                0x7f0002200000
            ]
        );
        assert!(
            p.ranges
                .iter()
                .all(|r| r.end - r.start == PMD && r.start % PMD == 0)
        );
        let skipped: Vec<(&str, SkipReason)> =
            p.skipped.iter().map(|s| (s.vma.as_str(), s.why)).collect();
        assert_eq!(
            skipped,
            [
                ("/usr/bin/cat", SkipReason::NotEligible),
                ("[anon]", SkipReason::NotEligible),
                ("[stack]", SkipReason::NotEligible)
            ]
        );
    }

    #[test]
    fn unaligned_vma_when_ineligible_ones_are_included() {
        let vmas = smaps::parse(smaps::tests::FIXTURE).unwrap();
        let mut o = opts(Selection::VmaName("[anon]".into()));
        o.include_ineligible = true;
        let p = plan(&vmas, &o, &HugeMap::new());
        // 0x7f0000001000..0x7f0000402000: only the chunk at 0x7f0000200000 fits.
        assert_eq!(starts(&p), [0x7f0000200000]);
        assert!(p.skipped.is_empty());
    }

    #[test]
    fn range_is_clipped() {
        let vmas = [
            vma(0x40000000, 0x40a00000, "[heap]", true),
            vma(0x50000000, 0x50400000, "", true),
        ];
        // Unaligned bounds inside the heap: only whole chunks inside the range.
        let p = plan(
            &vmas,
            &opts(Selection::Range {
                start: 0x40100000,
                end: 0x40700000,
            }),
            &HugeMap::new(),
        );
        assert_eq!(starts(&p), [0x40200000, 0x40400000]);
        // A range spanning both VMAs and the gap between them.
        let p = plan(
            &vmas,
            &opts(Selection::Range {
                start: 0x40800000,
                end: 0x50200000,
            }),
            &HugeMap::new(),
        );
        assert_eq!(starts(&p), [0x40800000, 0x50000000]);
        assert_eq!(p.ranges[1].vma, "[anon]");
        // A range too small for any chunk.
        let p = plan(
            &vmas,
            &opts(Selection::Range {
                start: 0x40000000,
                end: 0x40100000,
            }),
            &HugeMap::new(),
        );
        assert!(p.ranges.is_empty());
        assert_eq!(p.skipped[0].why, SkipReason::TooSmall);
    }

    #[test]
    fn vma_name_matching() {
        let vmas = [
            vma(0x40000000, 0x40400000, "[heap]", true),
            vma(0x50000000, 0x50200000, "[anon:jemalloc]", true),
            vma(0x60000000, 0x60200000, "/usr/lib/libfoo.so", true),
            vma(0x70000000, 0x70200000, "[anon:other]", false),
        ];
        let names = |sel: &str| {
            plan(
                &vmas,
                &opts(Selection::VmaName(sel.into())),
                &HugeMap::new(),
            )
            .ranges
            .iter()
            .map(|r| r.vma.clone())
            .collect::<Vec<_>>()
        };
        assert_eq!(names("[heap]"), ["[heap]", "[heap]"]);
        assert_eq!(names("jemalloc"), ["[anon:jemalloc]"]);
        assert_eq!(names("libfoo.so"), ["/usr/lib/libfoo.so"]);
        assert!(names("[stack]").is_empty());
        // Matching an ineligible VMA plans nothing and says why.
        let p = plan(
            &vmas,
            &opts(Selection::VmaName("other".into())),
            &HugeMap::new(),
        );
        assert!(p.ranges.is_empty());
        assert_eq!(p.skipped[0].why, SkipReason::NotEligible);
        assert_eq!(p.skipped[0].vma, "[anon:other]");
    }

    #[test]
    fn already_huge_chunks_are_marked() {
        let vmas = [vma(0x40000000, 0x40800000, "[heap]", true)];
        // The second chunk is fully huge, the third only half.
        let huge = HugeMap::from_ranges([(0x40200000, 0x40400000), (0x40400000, 0x40500000)]);
        let p = plan(&vmas, &opts(Selection::All), &huge);
        let initial: Vec<Initial> = p.ranges.iter().map(|r| r.initial).collect();
        assert_eq!(
            initial,
            [
                Initial::Collapse,
                Initial::AlreadyHuge,
                Initial::Collapse,
                Initial::Collapse
            ]
        );
    }

    #[test]
    fn order_n_chunking() {
        // Order 4: 16 pages = 64 KiB chunks.
        let vmas = [vma(0x40001000, 0x40031000, "", true)];
        let mut o = opts(Selection::All);
        o.chunk_size = 16 * 4096;
        let p = plan(&vmas, &o, &HugeMap::new());
        assert_eq!(starts(&p), [0x40010000, 0x40020000]);
        assert!(p.ranges.iter().all(|r| r.end - r.start == 0x10000));
        // A PMD mapping covers the smaller chunks inside it.
        let huge = HugeMap::from_ranges([(0x40000000, 0x40200000)]);
        let p = plan(&vmas, &o, &huge);
        assert!(p.ranges.iter().all(|r| r.initial == Initial::AlreadyHuge));
    }

    fn region(start: u64, end: u64, nr_accesses: u32, age: u32) -> Region {
        Region {
            start,
            end,
            nr_accesses,
            age,
        }
    }

    fn hot_opts(min_hotness: u32) -> HotOptions {
        HotOptions {
            min_hotness,
            chunk_size: PMD,
            include_ineligible: false,
        }
    }

    #[test]
    fn hot_planner_orders_and_filters() {
        let base = 0x40000000;
        let vmas = [
            vma(base, base + 10 * MIB, "[heap]", true),
            vma(base + 16 * MIB, base + 20 * MIB, "", false),
        ];
        let regions = [
            // Chunk 0: hotness 4 (cold with min 5).
            region(base, base + PMD, 4, 10),
            // Chunk 1: half covered with 20 -> hotness 10, age 3.
            region(base + PMD, base + 3 * MIB, 20, 3),
            // Chunks 2-3: hotness 10, age 7; chunk 3 is already huge.
            region(base + 4 * MIB, base + 8 * MIB, 10, 7),
            // Chunk 4 (8..10 MiB): hotness 30 from two regions of 30.
            region(base + 8 * MIB, base + 9 * MIB, 30, 1),
            region(base + 9 * MIB, base + 10 * MIB, 30, 2),
            // The ineligible VMA is hot but skipped.
            region(base + 16 * MIB, base + 20 * MIB, 99, 9),
        ];
        let huge = HugeMap::from_ranges([(base + 6 * MIB, base + 8 * MIB)]);
        let p = plan_hot(&regions, &vmas, &huge, &hot_opts(5));
        let got: Vec<(u64, u32, u32)> = p
            .hot
            .iter()
            .map(|h| ((h.start - base) / MIB, h.hotness, h.age))
            .collect();
        assert_eq!(got, [(8, 30, 2), (4, 10, 7), (2, 10, 3)]);
        assert!(p.hot.iter().all(|h| h.vma == "[heap]"));
        let cold: Vec<(u64, u32)> = p
            .cold
            .iter()
            .map(|h| ((h.start - base) / MIB, h.hotness))
            .collect();
        assert_eq!(cold, [(0, 4)]);
        assert_eq!(p.hot_huge_bytes, PMD);
        assert_eq!(
            p.hot[0].planned(),
            PlannedRange {
                start: base + 8 * MIB,
                end: base + 10 * MIB,
                vma: "[heap]".into(),
                initial: Initial::Collapse
            }
        );

        // With ineligible VMAs included, the hot one there comes first.
        let mut o = hot_opts(5);
        o.include_ineligible = true;
        let p = plan_hot(&regions, &vmas, &huge, &o);
        assert_eq!(p.hot.len(), 5);
        assert_eq!((p.hot[0].start, p.hot[0].hotness), (base + 16 * MIB, 99));
        assert_eq!(p.hot[0].vma, "[anon]");
    }

    #[test]
    fn hot_planner_without_regions_is_empty() {
        let vmas = [vma(0x40000000, 0x40400000, "", true)];
        assert_eq!(
            plan_hot(&[], &vmas, &HugeMap::new(), &hot_opts(0)),
            HotPlan::default()
        );
    }
}
