/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * warden_abi.h - Warden's hypercall ABI v1 (revision 1.0) for C clients.
 *
 * GENERATED FILE, DO NOT EDIT: written by `cargo xtask abi-header` from the
 * constants of the host-abi crate (host-abi/src/lib.rs, host_abi::table::GROUPS),
 * the single source of truth. The contract behind the values is docs/abi.md.
 *
 * Calling convention: SMCCC 1.1 fast calls over HVC #0 (or SMC #0, trapped by
 * Warden). Function ID in w0, arguments in x1..x6, status in x0 (0 or a negative
 * WARDEN_ERR_*), results in x1..x3; x4..x17 are preserved.
 */

#ifndef WARDEN_ABI_H
#define WARDEN_ABI_H

#ifdef __KERNEL__
#include <linux/types.h>
#else
#include <stdint.h>
#endif

/*
 * Service range and endpoint encoding.
 */

/* Base of Warden's SMC64 fast calls: Vendor Specific Hypervisor Service (OEN 6). */
#define WARDEN_VENDOR_HYP_BASE     0xC6000000UL
/* Endpoint (ATTACH x2, EVENT_POLL x1): bit position of the SMMU index (63:32). */
#define WARDEN_ENDPOINT_SMMU_SHIFT 32
/* Endpoint: mask of the StreamID (bits 31:0). */
#define WARDEN_ENDPOINT_SID_MASK   0xFFFFFFFFUL

/*
 * Standard SMCCC discovery calls Warden answers itself.
 */

/* `SMCCC_VERSION`: returns 0x1_0001 for SMCCC 1.1. */
#define WARDEN_SMCCC_VERSION             0x80000000UL
/* `SMCCC_ARCH_FEATURES`: x1 = function ID queried. */
#define WARDEN_SMCCC_ARCH_FEATURES       0x80000001UL
/* Vendor hypervisor service `CALL_UID`. */
#define WARDEN_SMCCC_VENDOR_HYP_CALL_UID 0x8600FF01UL
/* Vendor hypervisor service `REVISION`. */
#define WARDEN_SMCCC_VENDOR_HYP_REVISION 0x8600FF03UL
/* The SMCCC version Warden implements (1.1). */
#define WARDEN_SMCCC_VERSION_1_1         0x10001UL
/* `CALL_UID` result w0 (`"ward"`). */
#define WARDEN_SMCCC_UID_0               0x77617264UL
/* `CALL_UID` result w1 (`"en-h"`). */
#define WARDEN_SMCCC_UID_1               0x656E2D68UL
/* `CALL_UID` result w2 (`"yp-v"`). */
#define WARDEN_SMCCC_UID_2               0x79702D76UL
/* `CALL_UID` result w3 (UID version 1). */
#define WARDEN_SMCCC_UID_3               0x00000001UL
/* `REVISION` result x0: the ABI's major revision. */
#define WARDEN_SMCCC_REVISION_MAJOR      0x00000001UL
/* `REVISION` result x1: the ABI's minor revision. */
#define WARDEN_SMCCC_REVISION_MINOR      0x00000000UL

/*
 * Warden's calls (SMC64 fast calls, `VENDOR_HYP_BASE + n`), as in the ABI v1
 * table.
 */

/* FEATURES: x1 feature bits, x2 page sizes, x3 limits. */
#define WARDEN_FN_FEATURES     0xC6000000UL
/* DOMAIN_ALLOC: x1 flags -> x1 domain. */
#define WARDEN_FN_DOMAIN_ALLOC 0xC6000001UL
/* DOMAIN_FREE: x1 domain. */
#define WARDEN_FN_DOMAIN_FREE  0xC6000002UL
/* ATTACH: x1 domain, x2 endpoint. */
#define WARDEN_FN_ATTACH       0xC6000003UL
/* MAP: x1 domain, x2 iova, x3 pa, x4 size, x5 prot -> x1 bytes mapped. */
#define WARDEN_FN_MAP          0xC6000004UL
/* UNMAP: x1 domain, x2 iova, x3 size -> x1 bytes unmapped. */
#define WARDEN_FN_UNMAP        0xC6000005UL
/* FLUSH: x1 domain. */
#define WARDEN_FN_FLUSH        0xC6000006UL
/* IOVA_TO_PHYS: x1 domain, x2 iova -> x1 pa. */
#define WARDEN_FN_IOVA_TO_PHYS 0xC6000007UL
/* EVENT_POLL: -> x1 endpoint, x2 address, x3 type and flags; NOENT when none. */
#define WARDEN_FN_EVENT_POLL   0xC6000008UL
/* STATS: x1 counter group -> counters. */
#define WARDEN_FN_STATS        0xC6000009UL
/* MEM_DONATE: x1 pa, x2 pages. */
#define WARDEN_FN_MEM_DONATE   0xC600000AUL
/* MEM_RECLAIM: x1 pages wanted -> x1 pa, x2 pages returned. */
#define WARDEN_FN_MEM_RECLAIM  0xC600000BUL

/*
 * Status codes returned in `x0`. Zero is success; errors are negative.
 */

/* Success. */
#define WARDEN_SUCCESS           0L
/* Unknown function ID or feature. */
#define WARDEN_ERR_NOT_SUPPORTED (-1L)
/* Bad argument: alignment, size, flags, overflow. */
#define WARDEN_ERR_INVALID       (-2L)
/* Page not owned by the host, or Warden memory. */
#define WARDEN_ERR_DENIED        (-3L)
/* No such domain, endpoint or mapping. */
#define WARDEN_ERR_NOENT         (-4L)
/* Busy: domain attached, page pinned, endpoint in use. */
#define WARDEN_ERR_BUSY          (-5L)
/* Page pool empty: donate memory and retry. */
#define WARDEN_ERR_NOMEM         (-6L)
/* No VMID or domain slot left. */
#define WARDEN_ERR_NOSPC         (-7L)
/* IOVA already mapped. */
#define WARDEN_ERR_EXIST         (-8L)

/*
 * Well-known domains.
 */

/* The host identity domain: the shared host stage-2. */
#define WARDEN_DOMAIN_HOST          0UL
/* The blocking domain: every DMA aborts. */
#define WARDEN_DOMAIN_BLOCKED       1UL
/* First host-managed domain ID. */
#define WARDEN_DOMAIN_FIRST_MANAGED 2UL

/*
 * DOMAIN_ALLOC flags (x1).
 */

/* Batched invalidation (0 = strict). */
#define WARDEN_DOMAIN_FLAG_BATCHED       (1UL << 0)
/*
 * The devices attached are not cache coherent: Warden cleans and invalidates the
 * CPU caches for mapped pages.
 */
#define WARDEN_DOMAIN_FLAG_NON_COHERENT  (1UL << 1)
/* Bits 15:8: log2 of the granule (0 means 12, i.e. 4 KiB; 14 = 16 KiB; 16 = 64 KiB). */
#define WARDEN_DOMAIN_FLAG_GRANULE_SHIFT 8
/* Mask of the granule field (after shifting). */
#define WARDEN_DOMAIN_FLAG_GRANULE_MASK  0xFFUL
/* Every defined bit; others must be zero. */
#define WARDEN_DOMAIN_FLAG_ALL           0xFF03UL

/*
 * MAP prot (x5).
 */

/* Device may read. */
#define WARDEN_PROT_READ  (1UL << 0)
/* Device may write. */
#define WARDEN_PROT_WRITE (1UL << 1)
/* Every defined bit. */
#define WARDEN_PROT_ALL   0x3UL

/*
 * FEATURES results.
 */

/* x1: host stage-2 changes use broadcast TLB maintenance (BTM) only. */
#define WARDEN_FEATURES_BTM                   (1UL << 0)
/* x1: the SMMUs support range invalidation (RIL). */
#define WARDEN_FEATURES_RIL                   (1UL << 1)
/* x1: batched domains are supported. */
#define WARDEN_FEATURES_BATCHED               (1UL << 2)
/* x1: non-coherent domains are supported. */
#define WARDEN_FEATURES_NON_COHERENT          (1UL << 3)
/* x1: host-managed domains are invalidated with CPU TLBIs by VMID (BTM). */
#define WARDEN_FEATURES_DOMAIN_CPU_TLBI       (1UL << 4)
/* x2: 4 KiB granule domains are supported (bit n set: granule of 2^n bytes). */
#define WARDEN_FEATURES_GRANULE_4K            (1UL << 12)
/* x2: 16 KiB granule domains are supported. */
#define WARDEN_FEATURES_GRANULE_16K           (1UL << 14)
/* x2: 64 KiB granule domains are supported. */
#define WARDEN_FEATURES_GRANULE_64K           (1UL << 16)
/* x3 bits 15:0: most host-managed domains. */
#define WARDEN_FEATURES_LIMIT_DOMAINS_SHIFT   0
/* Mask of the domains limit (after shifting). */
#define WARDEN_FEATURES_LIMIT_DOMAINS_MASK    0xFFFFUL
/* x3 bits 23:16: VMID bits. */
#define WARDEN_FEATURES_LIMIT_VMID_BITS_SHIFT 16
/* Mask of the VMID bits limit (after shifting). */
#define WARDEN_FEATURES_LIMIT_VMID_BITS_MASK  0xFFUL
/* x3 bits 31:24: IOVA (input) bits of host-managed domains. */
#define WARDEN_FEATURES_LIMIT_IAS_SHIFT       24
/* Mask of the IOVA bits limit (after shifting). */
#define WARDEN_FEATURES_LIMIT_IAS_MASK        0xFFUL
/* x3 bits 39:32: output address bits. */
#define WARDEN_FEATURES_LIMIT_OAS_SHIFT       32
/* Mask of the output address bits limit (after shifting). */
#define WARDEN_FEATURES_LIMIT_OAS_MASK        0xFFUL

/*
 * STATS counter groups (x1); each returns three counters in x1..x3, cumulative
 * since boot unless marked "now".
 */

/* (hypercalls, SMMU CMD_SYNCs, CPU TLBI operations). */
#define WARDEN_STATS_CALLS_SYNCS_TLBIS 0UL
/* (SMMU TLBI_S2_IPA commands, TLBI_S12_VMALL commands, CFGI_STE commands). */
#define WARDEN_STATS_SMMU_COMMANDS     1UL
/* (pages pinned now, batched pages pending invalidation now, pages donated now). */
#define WARDEN_STATS_PAGES             2UL
/* (MAP calls, UNMAP calls, FLUSH calls). */
#define WARDEN_STATS_DMA_CALLS         3UL
/* (level-1 blocks, level-2 blocks, level-3 pages) written by MAP into domain tables. */
#define WARDEN_STATS_LEAVES_WRITTEN    4UL

/*
 * EVENT_POLL's x3: event type in bits 7:0, flags above.
 */

/*
 * Mask of the event type: an SMMUv3 event number (`event_type`, C
 * `WARDEN_EVENT_TYPE_*`).
 */
#define WARDEN_EVENT_TYPE_MASK   0xFFUL
/* The access was a read (else a write). */
#define WARDEN_EVENT_FLAG_READ   (1UL << 8)
/* The fault was at stage 2. */
#define WARDEN_EVENT_FLAG_STAGE2 (1UL << 9)
/* Events were lost before this one (ring overflow). */
#define WARDEN_EVENT_FLAG_LOST   (1UL << 10)

/*
 * EVENT_POLL event types (x3 bits 7:0): the SMMUv3 architecture's event
 * numbers. Other architected numbers may appear too.
 */

/* C_BAD_STREAMID: StreamID beyond the stream table. */
#define WARDEN_EVENT_TYPE_C_BAD_STREAMID 0x02UL
/* C_BAD_STE: invalid or illegal STE (a StreamID Warden does not know of). */
#define WARDEN_EVENT_TYPE_C_BAD_STE      0x04UL
/* F_WALK_EABT: external abort during a table walk. */
#define WARDEN_EVENT_TYPE_F_WALK_EABT    0x0BUL
/* F_TRANSLATION: no valid translation (unmapped IOVA, blocking domain). */
#define WARDEN_EVENT_TYPE_F_TRANSLATION  0x10UL
/* F_ADDR_SIZE: address beyond the domain's input or output range. */
#define WARDEN_EVENT_TYPE_F_ADDR_SIZE    0x11UL
/* F_ACCESS: access flag fault. */
#define WARDEN_EVENT_TYPE_F_ACCESS       0x12UL
/* F_PERMISSION: the mapping forbids the access (prot). */
#define WARDEN_EVENT_TYPE_F_PERMISSION   0x13UL

/*
 * MEM_DONATE / MEM_RECLAIM units and limits.
 */

/* Size of the pages MEM_DONATE and MEM_RECLAIM count (always 4 KiB). */
#define WARDEN_MEM_PAGE_SIZE 4096UL
/* Most pages one MEM_DONATE or MEM_RECLAIM call handles (1 GiB). */
#define WARDEN_MEM_MAX_PAGES 262144UL

/*
 * Helpers.
 */

/* The endpoint (ATTACH x2) of StreamID `sid` behind SMMU number `smmu`. */
static inline uint64_t warden_endpoint(uint32_t smmu, uint32_t sid)
{
	return ((uint64_t)smmu << WARDEN_ENDPOINT_SMMU_SHIFT) | sid;
}

/* The SMMU index of an endpoint (ATTACH x2, EVENT_POLL x1). */
static inline uint32_t warden_endpoint_smmu(uint64_t ep)
{
	return (uint32_t)(ep >> WARDEN_ENDPOINT_SMMU_SHIFT);
}

/* The StreamID of an endpoint (ATTACH x2, EVENT_POLL x1). */
static inline uint32_t warden_endpoint_sid(uint64_t ep)
{
	return (uint32_t)(ep & WARDEN_ENDPOINT_SID_MASK);
}

/* DOMAIN_ALLOC's granule field for a granule of 2^log2 bytes (12, 14, 16). */
static inline uint64_t warden_domain_granule(unsigned int log2)
{
	return ((uint64_t)log2 & WARDEN_DOMAIN_FLAG_GRANULE_MASK)
	       << WARDEN_DOMAIN_FLAG_GRANULE_SHIFT;
}

/* One field of FEATURES' x3, e.g. (x3, WARDEN_FEATURES_LIMIT_IAS_SHIFT,
 * WARDEN_FEATURES_LIMIT_IAS_MASK). */
static inline uint64_t warden_features_limit(uint64_t x3, unsigned int shift,
					     uint64_t mask)
{
	return (x3 >> shift) & mask;
}

/* Whether a status (x0) is an error: every error code is negative. */
static inline int warden_is_error(uint64_t x0)
{
	return (int64_t)x0 < 0;
}

#endif /* WARDEN_ABI_H */
