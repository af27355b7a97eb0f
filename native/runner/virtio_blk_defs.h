// Constants of the virtio 0.9.5 legacy PCI transport and the virtio-blk device.
#pragma once
#include <cstdint>

namespace runner {

constexpr uint16_t kVirtioVendor = 0x1af4, kVirtioBlkLegacyDevice = 0x1001, kVirtioSubsysBlk = 2;
// Legacy I/O BAR layout (no MSI-X, so the device config starts at 20).
constexpr uint16_t kVpHostFeatures = 0, kVpGuestFeatures = 4, kVpQueuePfn = 8, kVpQueueNum = 12;
constexpr uint16_t kVpQueueSel = 14, kVpQueueNotify = 16, kVpStatus = 18, kVpIsr = 19, kVpConfig = 20;
constexpr uint32_t kVpBarSize = 64;
constexpr uint32_t kVringAlign = 4096;

constexpr uint32_t kBlkFSegMax = 1u << 2, kBlkFRo = 1u << 5, kBlkFBlkSize = 1u << 6, kBlkFFlush = 1u << 9;
constexpr uint32_t kBlkTIn = 0, kBlkTOut = 1, kBlkTFlush = 4, kBlkTGetId = 8;
constexpr uint8_t kBlkStatusOk = 0, kBlkStatusIoErr = 1, kBlkStatusUnsupp = 2;
constexpr uint32_t kBlkIdBytes = 20;
constexpr uint16_t kVringDescFNext = 1, kVringDescFWrite = 2, kVringDescFIndirect = 4;

}  // namespace runner
