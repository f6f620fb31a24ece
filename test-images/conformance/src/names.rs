// The conformance suite's checks, in the order the image runs them. This file is the
// single list: the image (src/checks/) reports exactly these names, and xtask's harness
// (xtask/src/conformance.rs) `include!`s it to know what a complete run prints.

/// Every check, in run order.
pub const CHECKS: &[&str] = &[
    // Discovery
    "smccc-version",
    "arch-features",
    "call-uid",
    "revision",
    "features",
    "unknown-call",
    // Domains
    "alloc-strict",
    "alloc-batched",
    "alloc-bad-flags",
    "alloc-bad-granule",
    "alloc-limit",
    "free-unknown",
    "free-attached",
    "free-reuse",
    // Endpoints
    "attach-unknown-domain",
    "attach-unknown-endpoint",
    "attach-domain",
    "attach-host",
    "attach-blocked",
    // MAP / UNMAP / IOVA_TO_PHYS arguments
    "map-unaligned",
    "map-size-zero",
    "map-iova-overflow",
    "map-pa-overflow",
    "map-bad-prot",
    "map-unknown-domain",
    "map-fixed-domains",
    "map-double",
    "map-carveout-denied",
    "map-donated-denied",
    "unmap-nothing",
    "unmap-errors",
    "iova-to-phys",
    // Real DMA through the SMMU (edu)
    "dma-iova-translate",
    "dma-read-only",
    "dma-strict-unmap",
    "domain-isolation",
    "batched-unmap-pending",
    "batched-donate-pending",
    "batched-flush",
    "batched-deadline",
    "vmid-recycle",
    "dma-carveout-fault",
    "event-poll",
    // Pins and donation
    "donate-mapped-busy",
    "pool-exhaustion",
    // Command budgets (STATS)
    "budget-strict-unmap",
    "budget-batched-flush",
    "budget-block-map",
    // SMP
    "smp-bringup",
    "smp-concurrent",
    "smp-pins-balanced",
    "smp-cpu-off",
    // Firmware calls through Warden
    "fw-other-services-refused",
    "fw-system-suspend-refused",
    "fw-cpu-suspend-powerdown-refused",
    "fw-cpu-suspend-standby",
    "fw-psci-features",
    "fw-cpu-on-sve-hint",
    "s2-permission-fault",
];
