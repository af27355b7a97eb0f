// Guest RAM: one anonymous mapping, seen by the guest as [0, low) and, when RAM is larger
// than the space below the 32-bit PCI hole, [4 GiB, 4 GiB + rest). Every guest physical
// address the device models touch goes through ptr(), which bounds-checks it: guest
// memory is hostile.
#pragma once
#include <cstddef>
#include <cstdint>

namespace runner {

constexpr uint64_t kPciHoleStart = 0xC0000000ull;  // 3 GiB: RAM above this moves to 4 GiB
constexpr uint64_t kHighRamStart = 0x100000000ull;

struct GuestMemory {
  uint8_t* host = nullptr;
  uint64_t size = 0;  // bytes of RAM in all
  uint64_t low = 0;   // bytes mapped from guest address 0

  // Host pointer for [gpa, gpa + len) when the whole range is RAM, else nullptr.
  uint8_t* ptr(uint64_t gpa, uint64_t len) const {
    if (gpa < low) return len <= low - gpa ? host + gpa : nullptr;
    if (gpa >= kHighRamStart) {
      uint64_t off = gpa - kHighRamStart, high = size - low;
      if (off < high && len <= high - off) return host + low + off;
    }
    return nullptr;
  }
};

}  // namespace runner
