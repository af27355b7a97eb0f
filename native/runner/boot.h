// Loading a bzImage for its 64-bit entry (Documentation/arch/x86/boot.rst, protocol >= 2.12
// with XLF_KERNEL_64): the zero page built from the setup header, e820, command line,
// initrd at the top of low RAM, identity-mapped page tables and a flat GDT.
#pragma once
#include <cstdint>
#include <string>
#include <vector>
#include "guest_memory.h"

namespace runner {

constexpr uint16_t kBootCs = 0x10, kBootDs = 0x18;  // __BOOT_CS, __BOOT_DS

struct KernelImage {
  std::vector<uint8_t> file;
  size_t setupBytes = 0;        // (setup_sects + 1) * 512: where the protected-mode kernel starts
  uint32_t initSize = 0;        // memory the kernel needs from where it runs
  uint64_t runAddress = 0;      // where it runs: a relocatable kernel moves up to pref_address
  uint32_t initrdAddrMax = 0;
  uint32_t cmdlineSize = 0;
};

struct BootState {
  uint64_t entry = 0, zeroPage = 0, pml4 = 0, gdt = 0, stack = 0;
  uint16_t gdtLimit = 0;
};

// Reads and checks a bzImage; false with a message naming the file on anything wrong.
bool readKernel(const std::string& path, KernelImage& k, std::string& err);
// The least RAM (bytes) that holds the kernel's init_size where it runs, and an initrd of this size.
uint64_t minimumMemory(const KernelImage& k, uint64_t initrdSize);
// Writes kernel, initrd, command line, zero page, page tables and GDT into guest RAM.
bool loadBoot(const GuestMemory& mem, const KernelImage& k, const std::vector<uint8_t>& initrd,
              const std::string& cmdline, BootState& boot, std::string& err);

}  // namespace runner
