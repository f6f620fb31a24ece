//! SMMUv3 driver (being written).
