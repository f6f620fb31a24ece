//! The virtio-mmio (version 2) register map, the virtio-iommu feature bits, configuration
//! layout, request and property layouts, and the split-virtqueue ring layout (virtio 1.x:
//! "MMIO Device Register Layout", "Split Virtqueues", "IOMMU Device"). Constants only; the
//! logic is in [`super::mmio`], [`super::queue`], [`super::req`] and [`super::event`].
//!
//! All multi-byte fields are little-endian.

// ----------------------------------------------------------------------------------------
// Register offsets from the node's base (32-bit registers; the configuration space from
// `CONFIG` on).

/// `0x74726976` ("virt").
pub const MAGIC_VALUE: u64 = 0x000;
/// Device version: 2 (virtio 1.x, no legacy interface).
pub const VERSION: u64 = 0x004;
/// Virtio subsystem device ID.
pub const DEVICE_ID: u64 = 0x008;
/// Virtio subsystem vendor ID.
pub const VENDOR_ID: u64 = 0x00c;
/// The 32 device feature bits selected by `DEVICE_FEATURES_SEL` (read).
pub const DEVICE_FEATURES: u64 = 0x010;
/// Which 32 device feature bits `DEVICE_FEATURES` shows (write).
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
/// The 32 driver feature bits selected by `DRIVER_FEATURES_SEL` (write).
pub const DRIVER_FEATURES: u64 = 0x020;
/// Which 32 driver feature bits `DRIVER_FEATURES` sets (write).
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
/// The queue the `QUEUE_*` registers refer to (write).
pub const QUEUE_SEL: u64 = 0x030;
/// Largest queue size the device accepts for the selected queue; 0 = no such queue (read).
pub const QUEUE_NUM_MAX: u64 = 0x034;
/// Queue size the driver chose (write).
pub const QUEUE_NUM: u64 = 0x038;
/// The selected queue is live (read/write).
pub const QUEUE_READY: u64 = 0x044;
/// Index of a queue with new buffers (write).
pub const QUEUE_NOTIFY: u64 = 0x050;
/// Pending interrupt causes, [`INT_VRING`] and [`INT_CONFIG`] (read).
pub const INTERRUPT_STATUS: u64 = 0x060;
/// Clears the interrupt causes written as 1 (write).
pub const INTERRUPT_ACK: u64 = 0x064;
/// Device status (read/write; writing 0 resets the device).
pub const STATUS: u64 = 0x070;
/// Descriptor table address, low 32 bits (write).
pub const QUEUE_DESC_LOW: u64 = 0x080;
/// Descriptor table address, high 32 bits (write).
pub const QUEUE_DESC_HIGH: u64 = 0x084;
/// Available ("driver") ring address, low 32 bits (write).
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
/// Available ("driver") ring address, high 32 bits (write).
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
/// Used ("device") ring address, low 32 bits (write).
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
/// Used ("device") ring address, high 32 bits (write).
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// Shared memory region selector (write).
pub const SHM_SEL: u64 = 0x0ac;
/// Shared memory region length, low 32 bits: all ones for a region that does not exist.
pub const SHM_LEN_LOW: u64 = 0x0b0;
/// Shared memory region length, high 32 bits.
pub const SHM_LEN_HIGH: u64 = 0x0b4;
/// Shared memory region base, low 32 bits.
pub const SHM_BASE_LOW: u64 = 0x0b8;
/// Shared memory region base, high 32 bits.
pub const SHM_BASE_HIGH: u64 = 0x0bc;
/// Queue reset (only with `VIRTIO_F_RING_RESET`, which is not offered).
pub const QUEUE_RESET: u64 = 0x0c0;
/// Configuration atomicity value (read).
pub const CONFIG_GENERATION: u64 = 0x0fc;
/// First byte of the device-specific configuration space.
pub const CONFIG: u64 = 0x100;
/// Size of the register window the node describes.
pub const WINDOW: u64 = 0x200;

/// What `MAGIC_VALUE` reads.
pub const MAGIC: u32 = 0x7472_6976;
/// What `VERSION` reads.
pub const VERSION_2: u32 = 2;
/// The virtio-iommu device ID.
pub const ID_IOMMU: u32 = 23;

// ----------------------------------------------------------------------------------------
// Interrupt causes (`INTERRUPT_STATUS`, `INTERRUPT_ACK`).

/// A queue has new used buffers.
pub const INT_VRING: u32 = 1 << 0;
/// The configuration (or the device status: `DEVICE_NEEDS_RESET`) changed.
pub const INT_CONFIG: u32 = 1 << 1;

// ----------------------------------------------------------------------------------------
// Device status bits (`STATUS`).

/// The driver noticed the device.
pub const S_ACKNOWLEDGE: u32 = 1;
/// The driver knows how to drive it.
pub const S_DRIVER: u32 = 2;
/// The driver is set up and ready to drive the device.
pub const S_DRIVER_OK: u32 = 4;
/// Feature negotiation is complete (reads back clear when the device refused the features).
pub const S_FEATURES_OK: u32 = 8;
/// The device hit an error it cannot recover from without a reset (device-owned).
pub const S_DEVICE_NEEDS_RESET: u32 = 64;
/// The driver gave up on the device.
pub const S_FAILED: u32 = 128;

// ----------------------------------------------------------------------------------------
// Feature bits (device-specific 0..23, transport 24..).

/// `input_range` describes the IOVA range.
pub const F_INPUT_RANGE: u64 = 1 << 0;
/// `domain_range` describes the domain IDs.
pub const F_DOMAIN_RANGE: u64 = 1 << 1;
/// MAP and UNMAP requests are available.
pub const F_MAP_UNMAP: u64 = 1 << 2;
/// Legacy bypass of unattached endpoints (superseded by [`F_BYPASS_CONFIG`]; not offered).
pub const F_BYPASS: u64 = 1 << 3;
/// PROBE requests are available.
pub const F_PROBE: u64 = 1 << 4;
/// The `MAP_F_MMIO` flag is available.
pub const F_MMIO: u64 = 1 << 5;
/// The `bypass` config field and `ATTACH_F_BYPASS`.
pub const F_BYPASS_CONFIG: u64 = 1 << 6;
/// Indirect descriptors (not offered).
pub const F_INDIRECT_DESC: u64 = 1 << 28;
/// Event-index notification suppression (not offered).
pub const F_EVENT_IDX: u64 = 1 << 29;
/// Virtio 1.x (mandatory on a version-2 transport).
pub const F_VERSION_1: u64 = 1 << 32;
/// The device's own accesses go through a platform IOMMU (not offered).
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;
/// Packed virtqueues (not offered).
pub const F_RING_PACKED: u64 = 1 << 34;

// ----------------------------------------------------------------------------------------
// Configuration space (offsets from `CONFIG`).

/// `le64 page_size_mask`.
pub const CFG_PAGE_SIZE_MASK: u64 = 0x00;
/// `le64 input_range.start`.
pub const CFG_INPUT_START: u64 = 0x08;
/// `le64 input_range.end` (inclusive).
pub const CFG_INPUT_END: u64 = 0x10;
/// `le32 domain_range.start`.
pub const CFG_DOMAIN_START: u64 = 0x18;
/// `le32 domain_range.end` (inclusive).
pub const CFG_DOMAIN_END: u64 = 0x1c;
/// `le32 probe_size`.
pub const CFG_PROBE_SIZE: u64 = 0x20;
/// `u8 bypass` (the only field the driver may write).
pub const CFG_BYPASS: u64 = 0x24;
/// Size of `struct virtio_iommu_config` (with `u8 reserved[3]`).
pub const CFG_SIZE: u64 = 0x28;

// ----------------------------------------------------------------------------------------
// Split virtqueue layout.

/// Size of one descriptor: `le64 addr, le32 len, le16 flags, le16 next`.
pub const DESC_SIZE: u64 = 16;
/// Descriptor continues in `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Device-writable buffer.
pub const DESC_F_WRITE: u16 = 2;
/// The buffer holds a table of descriptors (not negotiated: malformed).
pub const DESC_F_INDIRECT: u16 = 4;
/// Available ring: `le16 flags, le16 idx, le16 ring[num]` (+ `used_event`, unused).
pub const AVAIL_RING: u64 = 4;
/// Available ring flag: the driver does not want used-buffer interrupts.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Offset of the used ring's `idx`.
pub const USED_IDX: u64 = 2;
/// Used ring: `le16 flags, le16 idx, {le32 id, le32 len} ring[num]` (+ `avail_event`).
pub const USED_RING: u64 = 4;
/// Size of one used element.
pub const USED_ELEM: u64 = 8;
/// Largest queue size of a split virtqueue.
pub const QUEUE_SIZE_LIMIT: u16 = 32768;

// ----------------------------------------------------------------------------------------
// Requests (`struct virtio_iommu_req_*`): the device-readable part, from the head on.

/// `ATTACH`: `le32 domain @4, le32 endpoint @8, le32 flags @12, u8 reserved[4] @16`.
pub const T_ATTACH: u8 = 1;
/// `DETACH`: `le32 domain @4, le32 endpoint @8, u8 reserved[8] @12`.
pub const T_DETACH: u8 = 2;
/// `MAP`: `le32 domain @4, le64 virt_start @8, le64 virt_end @16, le64 phys_start @24,
/// le32 flags @32`.
pub const T_MAP: u8 = 3;
/// `UNMAP`: `le32 domain @4, le64 virt_start @8, le64 virt_end @16, u8 reserved[4] @24`.
pub const T_UNMAP: u8 = 4;
/// `PROBE`: `le32 endpoint @4, u8 reserved[64] @8`; the writable part is
/// `u8 properties[probe_size]` and the tail.
pub const T_PROBE: u8 = 5;

/// Readable size of ATTACH.
pub const ATTACH_SIZE: usize = 20;
/// Readable size of DETACH.
pub const DETACH_SIZE: usize = 20;
/// Readable size of MAP.
pub const MAP_SIZE: usize = 36;
/// Readable size of UNMAP.
pub const UNMAP_SIZE: usize = 28;
/// Readable size of PROBE.
pub const PROBE_SIZE: usize = 72;
/// Size of the head (`u8 type, u8 reserved[3]`) and of the tail (`u8 status, u8
/// reserved[3]`).
pub const HEAD_SIZE: usize = 4;
/// Size of the tail.
pub const TAIL_SIZE: usize = 4;

/// ATTACH flag: the domain is a bypass (identity) domain.
pub const ATTACH_F_BYPASS: u32 = 1 << 0;
/// MAP flag: endpoints may read.
pub const MAP_F_READ: u32 = 1 << 0;
/// MAP flag: endpoints may write.
pub const MAP_F_WRITE: u32 = 1 << 1;
/// MAP flag: the physical range is device memory (only with [`F_MMIO`]).
pub const MAP_F_MMIO: u32 = 1 << 2;

// Statuses (`tail.status`).
/// Success.
pub const S_OK: u8 = 0;
/// Virtio communication error.
pub const S_IOERR: u8 = 1;
/// Unsupported request.
pub const S_UNSUPP: u8 = 2;
/// Internal device error.
pub const S_DEVERR: u8 = 3;
/// Invalid parameters.
pub const S_INVAL: u8 = 4;
/// Out-of-range parameters.
pub const S_RANGE: u8 = 5;
/// Entry not found.
pub const S_NOENT: u8 = 6;
/// Bad address.
pub const S_FAULT: u8 = 7;
/// Insufficient resources.
pub const S_NOMEM: u8 = 8;

// ----------------------------------------------------------------------------------------
// PROBE properties.

/// Property header: `le16 type (12 bits) | reserved (4 bits), le16 length` (length of the
/// value after the header).
pub const PROP_HEAD_SIZE: usize = 4;
/// Property type: reserved memory region.
pub const PROBE_T_RESV_MEM: u16 = 1;
/// `struct virtio_iommu_probe_resv_mem`: header, `u8 subtype @4, u8 reserved[3], le64 start
/// @8, le64 end @16` (inclusive).
pub const RESV_MEM_SIZE: usize = 24;
/// RESV_MEM subtype: addresses the driver must not map.
pub const RESV_MEM_T_RESERVED: u8 = 0;
/// RESV_MEM subtype: an MSI doorbell, translated by the device as is.
pub const RESV_MEM_T_MSI: u8 = 1;

// ----------------------------------------------------------------------------------------
// Fault reports (`struct virtio_iommu_fault`): `u8 reason @0, u8 reserved[3], le32 flags
// @4, le32 endpoint @8, le32 reserved1 @12, le64 address @16`.

/// Size of a fault report.
pub const FAULT_SIZE: usize = 24;
/// Fault reason: unknown or internal.
pub const FAULT_R_UNKNOWN: u8 = 0;
/// Fault reason: the endpoint is not attached to a domain.
pub const FAULT_R_DOMAIN: u8 = 1;
/// Fault reason: the address is not mapped, or not with these permissions.
pub const FAULT_R_MAPPING: u8 = 2;
/// Fault flag: a read.
pub const FAULT_F_READ: u32 = 1 << 0;
/// Fault flag: a write.
pub const FAULT_F_WRITE: u32 = 1 << 1;
/// Fault flag: an instruction fetch.
pub const FAULT_F_EXEC: u32 = 1 << 2;
/// Fault flag: `address` is valid.
pub const FAULT_F_ADDRESS: u32 = 1 << 8;
