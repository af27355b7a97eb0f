#include "boot.h"
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cstring>

namespace runner {

namespace {

// Setup header fields (offsets in the file and in the zero page, boot.rst).
constexpr size_t kSetupSects = 0x1f1, kBootFlag = 0x1fe, kHeaderMagic = 0x202, kVersion = 0x206;
constexpr size_t kTypeOfLoader = 0x210, kLoadFlags = 0x211, kRamdiskImage = 0x218, kRamdiskSize = 0x21c;
constexpr size_t kHeapEndPtr = 0x224, kCmdLinePtr = 0x228, kInitrdAddrMax = 0x22c, kXLoadFlags = 0x236;
constexpr size_t kCmdlineSize = 0x238, kPrefAddress = 0x258, kInitSize = 0x260, kE820Entries = 0x1e8, kE820Table = 0x2d0;
constexpr size_t kExtRamdiskImage = 0x0c0, kExtRamdiskSize = 0x0c4, kExtCmdLinePtr = 0x0c8;
constexpr uint8_t kCanUseHeap = 0x80, kLoadedHigh = 0x01;
constexpr uint16_t kXlfKernel64 = 0x01;
constexpr uint32_t kE820Ram = 1, kE820Reserved = 2;
constexpr size_t kE820Max = 128;

// Guest physical layout below 1 MiB.
constexpr uint64_t kGdtAddr = 0x500, kStackTop = 0x8ff0, kZeroPage = 0x7000, kPml4 = 0x9000;
constexpr uint64_t kPdpt = 0xa000, kPd = 0xb000;  // four page directories: 4 GiB of 2 MiB pages
constexpr uint64_t kCmdlineAddr = 0x20000, kEbdaStart = 0x9fc00, kKernelAddr = 0x100000;

uint16_t rd16(const uint8_t* p) { return p[0] | p[1] << 8; }
uint32_t rd32(const uint8_t* p) { return rd16(p) | static_cast<uint32_t>(rd16(p + 2)) << 16; }
void wr16(uint8_t* p, uint16_t v) { memcpy(p, &v, 2); }
void wr32(uint8_t* p, uint32_t v) { memcpy(p, &v, 4); }
void wr64(uint8_t* p, uint64_t v) { memcpy(p, &v, 8); }

}  // namespace

bool readKernel(const std::string& path, KernelImage& k, std::string& err) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return err = path + ": cannot open kernel: " + strerror(errno), false;
  struct stat st;
  bool ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size < (1 << 30);
  if (ok) {
    k.file.resize(st.st_size);
    size_t done = 0;
    while (ok && done < k.file.size()) {
      ssize_t n = read(fd, k.file.data() + done, k.file.size() - done);
      if (n <= 0) ok = false;
      else done += n;
    }
  }
  close(fd);
  if (!ok) return err = path + ": cannot read kernel (not a regular file under 1 GiB?)", false;
  const uint8_t* f = k.file.data();
  if (k.file.size() < 0x1000 || memcmp(f + kHeaderMagic, "HdrS", 4) != 0 || rd16(f + kBootFlag) != 0xaa55)
    return err = path + ": not a bzImage (no HdrS setup header)", false;
  uint16_t version = rd16(f + kVersion);
  if (version < 0x020c) return err = path + ": boot protocol " + std::to_string(version >> 8) + "." + std::to_string(version & 0xff) + " is older than 2.12", false;
  if (!(rd16(f + kXLoadFlags) & kXlfKernel64)) return err = path + ": kernel has no 64-bit entry (XLF_KERNEL_64)", false;
  if (!(f[kLoadFlags] & kLoadedHigh)) return err = path + ": kernel does not load at 1 MiB (not a bzImage)", false;
  size_t sects = f[kSetupSects] ? f[kSetupSects] : 4;
  k.setupBytes = (sects + 1) * 512;
  if (k.setupBytes + 0x200 >= k.file.size()) return err = path + ": setup_sects " + std::to_string(sects) + " is past the end of the file", false;
  k.initSize = rd32(f + kInitSize);
  uint64_t payload = k.file.size() - k.setupBytes;
  if (k.initSize < payload) k.initSize = static_cast<uint32_t>((payload + 0xfff) & ~0xfffull);
  // The decompressor moves itself to pref_address (LOAD_PHYSICAL_ADDR) when loaded lower,
  // and needs init_size bytes from there.
  uint64_t pref = rd32(f + kPrefAddress) | uint64_t{rd32(f + kPrefAddress + 4)} << 32;
  k.runAddress = pref > kKernelAddr && pref < (1ull << 32) ? pref : kKernelAddr;
  k.initrdAddrMax = rd32(f + kInitrdAddrMax);
  k.cmdlineSize = rd32(f + kCmdlineSize);
  return true;
}

uint64_t minimumMemory(const KernelImage& k, uint64_t initrdSize) {
  return k.runAddress + ((uint64_t{k.initSize} + 0xfff) & ~0xfffull) + ((initrdSize + 0xfff) & ~0xfffull);
}

bool loadBoot(const GuestMemory& mem, const KernelImage& k, const std::vector<uint8_t>& initrd,
              const std::string& cmdline, BootState& boot, std::string& err) {
  const uint8_t* f = k.file.data();
  if (cmdline.size() > k.cmdlineSize || cmdline.size() >= 0x10000)
    return err = "command line is " + std::to_string(cmdline.size()) + " bytes; the kernel takes at most " + std::to_string(k.cmdlineSize), false;
  uint64_t payload = k.file.size() - k.setupBytes;
  uint8_t* kernel = mem.ptr(kKernelAddr, payload);
  if (!kernel || minimumMemory(k, initrd.size()) > mem.low) return err = "too little memory for this kernel", false;
  memcpy(kernel, f + k.setupBytes, payload);

  uint8_t* zp = mem.ptr(kZeroPage, 4096);
  memset(zp, 0, 4096);
  size_t hdrEnd = 0x202 + f[0x201];  // the header's length is given by the jump at 0x200
  if (hdrEnd > 0x280) hdrEnd = 0x280;
  memcpy(zp + kSetupSects, f + kSetupSects, hdrEnd - kSetupSects);
  zp[kTypeOfLoader] = 0xff;
  zp[kLoadFlags] |= kCanUseHeap;
  wr16(zp + kHeapEndPtr, 0xfe00 - 0x200);
  memcpy(mem.ptr(kCmdlineAddr, cmdline.size() + 1), cmdline.c_str(), cmdline.size() + 1);
  wr32(zp + kCmdLinePtr, kCmdlineAddr);
  wr32(zp + kExtCmdLinePtr, 0);

  if (!initrd.empty()) {
    uint64_t top = mem.low;
    if (k.initrdAddrMax && top > uint64_t{k.initrdAddrMax} + 1) top = uint64_t{k.initrdAddrMax} + 1;
    uint64_t at = (top - initrd.size()) & ~0xfffull;
    if (initrd.size() > top || at < k.runAddress + k.initSize) return err = "too little memory for this kernel and initrd", false;
    memcpy(mem.ptr(at, initrd.size()), initrd.data(), initrd.size());
    wr32(zp + kRamdiskImage, static_cast<uint32_t>(at));
    wr32(zp + kRamdiskSize, static_cast<uint32_t>(initrd.size()));
    wr32(zp + kExtRamdiskImage, static_cast<uint32_t>(at >> 32));
    wr32(zp + kExtRamdiskSize, static_cast<uint32_t>(static_cast<uint64_t>(initrd.size()) >> 32));
  }

  // e820: conventional memory, the EBDA/BIOS area reserved, RAM from 1 MiB, RAM above 4 GiB.
  struct { uint64_t addr, size; uint32_t type; } map[] = {
      {0, kEbdaStart, kE820Ram},
      {kEbdaStart, kKernelAddr - kEbdaStart, kE820Reserved},
      {kKernelAddr, mem.low - kKernelAddr, kE820Ram},
      {kHighRamStart, mem.size - mem.low, kE820Ram},
  };
  uint8_t n = 0;
  for (auto& e : map) {
    if (!e.size || n >= kE820Max) continue;
    uint8_t* p = zp + kE820Table + n++ * 20;
    wr64(p, e.addr);
    wr64(p + 8, e.size);
    wr32(p + 16, e.type);
  }
  zp[kE820Entries] = n;

  // Identity map of the first 4 GiB with 2 MiB pages.
  uint8_t* pml4 = mem.ptr(kPml4, 4096);
  uint8_t* pdpt = mem.ptr(kPdpt, 4096);
  uint8_t* pd = mem.ptr(kPd, 4 * 4096);
  memset(pml4, 0, 4096);
  memset(pdpt, 0, 4096);
  wr64(pml4, kPdpt | 0x3);  // present, writable
  for (uint64_t i = 0; i < 4; i++) wr64(pdpt + i * 8, (kPd + i * 4096) | 0x3);
  for (uint64_t i = 0; i < 4 * 512; i++) wr64(pd + i * 8, (i << 21) | 0x83);  // present, writable, 2 MiB

  // GDT: null, null, __BOOT_CS (64-bit code), __BOOT_DS (flat data).
  uint8_t* gdt = mem.ptr(kGdtAddr, 32);
  wr64(gdt, 0);
  wr64(gdt + 8, 0);
  wr64(gdt + kBootCs, 0x00af9b000000ffffull);
  wr64(gdt + kBootDs, 0x00cf93000000ffffull);

  boot.entry = kKernelAddr + 0x200;
  boot.zeroPage = kZeroPage;
  boot.pml4 = kPml4;
  boot.gdt = kGdtAddr;
  boot.gdtLimit = 32 - 1;
  boot.stack = kStackTop;
  return true;
}

}  // namespace runner
