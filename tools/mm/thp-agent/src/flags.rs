//! The `flags` argument of `process_madvise(2)` for MADV_COLLAPSE, built from
//! the command line or the configuration file.

use crate::uapi::{
    HPAGE_PMD_ORDER, HPAGE_PMD_SIZE, MADV_F_COLLAPSE_DEFRAG, MADV_F_COLLAPSE_LIGHT,
    MADV_F_COLLAPSE_LIMITS, PAGE_SIZE, madv_f_collapse_order,
};
use serde::{Deserialize, Serialize};

/// The collapse options a user can ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollapseFlags {
    /// `MADV_F_COLLAPSE_LIGHT`: do not reclaim or compact for the allocation.
    pub light: bool,
    /// `MADV_F_COLLAPSE_DEFRAG`: retry reclaim and compaction for the allocation.
    pub defrag: bool,
    /// `MADV_F_COLLAPSE_LIMITS`: apply khugepaged's `max_ptes_*` limits.
    pub limits: bool,
    /// Folio order to collapse to; 0 (or 9) means the PMD order.
    pub order: u32,
}

/// A combination of options the kernel would reject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlagsError {
    /// `light` and `defrag` ask for opposite allocation policies.
    #[error(
        "--light and --defrag cannot be used together: one forbids reclaim and compaction, the other asks for them"
    )]
    LightAndDefrag,
    /// The order is neither 0 nor in 2..=9.
    #[error(
        "--order {0} is not valid: use 0 (or 9) for 2 MiB PMD pages, or 2..=8 for smaller multi-size THP (mTHP) folios"
    )]
    BadOrder(u32),
}

impl CollapseFlags {
    /// Checks the combination.
    pub fn validate(&self) -> Result<(), FlagsError> {
        if self.light && self.defrag {
            return Err(FlagsError::LightAndDefrag);
        }
        if self.order == 1 || self.order > HPAGE_PMD_ORDER {
            return Err(FlagsError::BadOrder(self.order));
        }
        Ok(())
    }

    /// The value of the `flags` argument of `process_madvise(2)`. Order 9 is
    /// encoded as 0, its equivalent, so that a plain PMD collapse passes 0 and
    /// works on kernels without the new flags.
    pub fn encode(&self) -> Result<u32, FlagsError> {
        self.validate()?;
        let mut f = 0;
        if self.limits {
            f |= MADV_F_COLLAPSE_LIMITS;
        }
        if self.defrag {
            f |= MADV_F_COLLAPSE_DEFRAG;
        }
        if self.light {
            f |= MADV_F_COLLAPSE_LIGHT;
        }
        if !self.is_pmd_order() {
            f |= madv_f_collapse_order(self.order);
        }
        Ok(f)
    }

    /// Whether the collapse is to PMD-sized (2 MiB) pages.
    pub fn is_pmd_order(&self) -> bool {
        self.order == 0 || self.order == HPAGE_PMD_ORDER
    }

    /// Size in bytes of the chunks to collapse: 2 MiB at the PMD order, else
    /// `2^order` pages.
    pub fn chunk_size(&self) -> u64 {
        if self.is_pmd_order() {
            HPAGE_PMD_SIZE
        } else {
            PAGE_SIZE << self.order
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(light: bool, defrag: bool, limits: bool, order: u32) -> CollapseFlags {
        CollapseFlags {
            light,
            defrag,
            limits,
            order,
        }
    }

    #[test]
    fn encodes_each_flag() {
        assert_eq!(f(false, false, false, 0).encode(), Ok(0));
        assert_eq!(f(false, false, true, 0).encode(), Ok(0x1));
        assert_eq!(f(false, true, false, 0).encode(), Ok(0x2));
        assert_eq!(f(true, false, false, 0).encode(), Ok(0x4));
        assert_eq!(f(true, false, true, 0).encode(), Ok(0x5));
        assert_eq!(f(false, false, false, 4).encode(), Ok(0x400));
        assert_eq!(f(false, true, true, 2).encode(), Ok(0x203));
        assert_eq!(f(false, false, false, 8).encode(), Ok(0x800));
        // Order 9 is the PMD order and encodes as 0.
        assert_eq!(f(false, false, false, 9).encode(), Ok(0));
    }

    #[test]
    fn rejects_light_with_defrag_and_bad_orders() {
        assert_eq!(
            f(true, true, false, 0).encode(),
            Err(FlagsError::LightAndDefrag)
        );
        assert_eq!(
            f(false, false, false, 1).encode(),
            Err(FlagsError::BadOrder(1))
        );
        assert_eq!(
            f(false, false, false, 10).encode(),
            Err(FlagsError::BadOrder(10))
        );
        assert_eq!(
            f(false, false, false, 64).encode(),
            Err(FlagsError::BadOrder(64))
        );
        assert!(
            FlagsError::LightAndDefrag
                .to_string()
                .contains("--light and --defrag")
        );
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(f(false, false, false, 0).chunk_size(), 2 << 20);
        assert_eq!(f(false, false, false, 9).chunk_size(), 2 << 20);
        assert_eq!(f(false, false, false, 2).chunk_size(), 16 << 10);
        assert_eq!(f(false, false, false, 4).chunk_size(), 64 << 10);
        assert_eq!(f(false, false, false, 8).chunk_size(), 1 << 20);
    }
}
