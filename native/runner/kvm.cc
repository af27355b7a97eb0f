#include "kvm.h"
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>
#include <memory>
#include "boot.h"

namespace runner {

namespace {

constexpr uint64_t kTssAddr = 0xfffbd000;       // 3 pages KVM needs on Intel, outside RAM
constexpr uint64_t kIdentityMapAddr = 0xfffbc000;
constexpr uint32_t kApicLvtLint0 = 0x350, kApicLvtLint1 = 0x360;
constexpr uint32_t kApicModeExtInt = 7, kApicModeNmi = 4;

// struct kvm_cpuid2 ends in __DECLARE_FLEX_ARRAY, which C++ lays out 4 bytes too far (and
// sizes the ioctl numbers by that): the C layout, spelled out.
constexpr uint32_t kMaxCpuidEntries = 256;  // KVM_MAX_CPUID_ENTRIES
struct CpuidHeader {
  uint32_t nent, padding;
};
struct CpuidTable {
  uint32_t nent = 0, padding = 0;
  kvm_cpuid_entry2 entries[kMaxCpuidEntries]{};
};
constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, CpuidHeader);
constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, CpuidHeader);

std::string sysErr(const char* what) { return std::string(what) + ": " + strerror(errno); }

// "" when fd speaks KVM API 12, else a sentence saying what it does instead.
std::string apiVersionProblem(int fd) {
  int v = ioctl(fd, KVM_GET_API_VERSION, 0);
  if (v < 0) return sysErr("/dev/kvm is not a working KVM device: KVM_GET_API_VERSION");
  if (v != KVM_API_VERSION) return "/dev/kvm speaks KVM API " + std::to_string(v) + ", not 12";
  return "";
}

}  // namespace

std::string kvmUsable() {
  int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) return sysErr("cannot open /dev/kvm");
  std::string why = apiVersionProblem(fd);
  ::close(fd);
  return why;
}

Kvm::~Kvm() {
  if (run) munmap(run, runSize_);
  if (vcpuFd >= 0) ::close(vcpuFd);
  if (vmFd_ >= 0) ::close(vmFd_);
  if (kvmFd_ >= 0) ::close(kvmFd_);
  if (mem.host) munmap(mem.host, mem.size);
}

bool Kvm::open(std::string& err) {
  kvmFd_ = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvmFd_ < 0) return err = sysErr("cannot open /dev/kvm"), false;
  if (!(err = apiVersionProblem(kvmFd_)).empty()) return false;
  if (ioctl(kvmFd_, KVM_CHECK_EXTENSION, KVM_CAP_IMMEDIATE_EXIT) <= 0) return err = "/dev/kvm lacks KVM_CAP_IMMEDIATE_EXIT", false;
  return true;
}

bool Kvm::createVm(uint64_t memBytes, std::string& err) {
  vmFd_ = ioctl(kvmFd_, KVM_CREATE_VM, 0);
  if (vmFd_ < 0) return err = sysErr("KVM_CREATE_VM"), false;
  if (ioctl(vmFd_, KVM_SET_TSS_ADDR, kTssAddr) < 0) return err = sysErr("KVM_SET_TSS_ADDR"), false;
  uint64_t idmap = kIdentityMapAddr;
  ioctl(vmFd_, KVM_SET_IDENTITY_MAP_ADDR, &idmap);  // Intel only; harmless to fail elsewhere
  if (ioctl(vmFd_, KVM_CREATE_IRQCHIP, 0) < 0) return err = sysErr("KVM_CREATE_IRQCHIP"), false;
  kvm_pit_config pit{};
  pit.flags = KVM_PIT_SPEAKER_DUMMY;
  if (ioctl(vmFd_, KVM_CREATE_PIT2, &pit) < 0) return err = sysErr("KVM_CREATE_PIT2"), false;

  void* p = mmap(nullptr, memBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return err = sysErr("cannot map guest memory"), false;
  mem.host = static_cast<uint8_t*>(p);
  mem.size = memBytes;
  mem.low = memBytes < kPciHoleStart ? memBytes : kPciHoleStart;
  kvm_userspace_memory_region r{};
  r.slot = 0;
  r.guest_phys_addr = 0;
  r.memory_size = mem.low;
  r.userspace_addr = reinterpret_cast<uint64_t>(mem.host);
  if (ioctl(vmFd_, KVM_SET_USER_MEMORY_REGION, &r) < 0) return err = sysErr("KVM_SET_USER_MEMORY_REGION"), false;
  if (memBytes > mem.low) {
    r.slot = 1;
    r.guest_phys_addr = kHighRamStart;
    r.memory_size = memBytes - mem.low;
    r.userspace_addr = reinterpret_cast<uint64_t>(mem.host + mem.low);
    if (ioctl(vmFd_, KVM_SET_USER_MEMORY_REGION, &r) < 0) return err = sysErr("KVM_SET_USER_MEMORY_REGION"), false;
  }
  return true;
}

bool Kvm::createVcpu(const BootState& boot, bool maskXsave, std::string& err) {
  vcpuFd = ioctl(vmFd_, KVM_CREATE_VCPU, 0);
  if (vcpuFd < 0) return err = sysErr("KVM_CREATE_VCPU"), false;
  int size = ioctl(kvmFd_, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (size < static_cast<int>(sizeof(kvm_run))) return err = sysErr("KVM_GET_VCPU_MMAP_SIZE"), false;
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpuFd, 0);
  if (p == MAP_FAILED) return err = sysErr("cannot map kvm_run"), false;
  run = static_cast<kvm_run*>(p);
  runSize_ = size;
  return setupCpuid(maskXsave, err) && setupRegs(boot, err) && setupLapic(err);
}

bool Kvm::setupCpuid(bool maskXsave, std::string& err) {
  auto table = std::make_unique<CpuidTable>();
  table->nent = kMaxCpuidEntries;
  if (ioctl(kvmFd_, kGetSupportedCpuid, table.get()) < 0) return err = sysErr("KVM_GET_SUPPORTED_CPUID"), false;
  for (uint32_t i = 0; i < table->nent && i < kMaxCpuidEntries; i++) {
    kvm_cpuid_entry2& e = table->entries[i];
    if (e.function == 1) {
      e.ebx &= 0x00ffffff;  // initial APIC id 0
      if (maskXsave) e.ecx &= ~((1u << 26) | (1u << 27) | (1u << 28));  // XSAVE, OSXSAVE, AVX
    }
    if (maskXsave && e.function == 0xd) e.eax = e.ebx = e.ecx = e.edx = 0;
  }
  if (ioctl(vcpuFd, kSetCpuid2, table.get()) < 0) return err = sysErr("KVM_SET_CPUID2"), false;
  return true;
}

bool Kvm::setupRegs(const BootState& boot, std::string& err) {
  kvm_sregs s{};
  if (ioctl(vcpuFd, KVM_GET_SREGS, &s) < 0) return err = sysErr("KVM_GET_SREGS"), false;
  kvm_segment code{};
  code.base = 0;
  code.limit = 0xffffffff;
  code.selector = kBootCs;
  code.type = 0xb;  // execute/read, accessed
  code.present = 1;
  code.s = 1;
  code.l = 1;
  code.g = 1;
  kvm_segment data = code;
  data.selector = kBootDs;
  data.type = 0x3;  // read/write, accessed
  data.l = 0;
  data.db = 1;
  s.cs = code;
  s.ds = s.es = s.fs = s.gs = s.ss = data;
  s.gdt.base = boot.gdt;
  s.gdt.limit = boot.gdtLimit;
  s.idt.base = 0;
  s.idt.limit = 0;
  s.cr3 = boot.pml4;
  s.cr4 = 1u << 5;                          // PAE
  s.cr0 = (1u << 0) | (1u << 4) | (1u << 31);  // PE, ET, PG
  s.efer = (1u << 8) | (1u << 10);          // LME, LMA
  if (ioctl(vcpuFd, KVM_SET_SREGS, &s) < 0) return err = sysErr("KVM_SET_SREGS"), false;
  kvm_regs r{};
  r.rflags = 2;
  r.rip = boot.entry;
  r.rsi = boot.zeroPage;
  r.rsp = boot.stack;
  if (ioctl(vcpuFd, KVM_SET_REGS, &r) < 0) return err = sysErr("KVM_SET_REGS"), false;
  return true;
}

bool Kvm::setupLapic(std::string& err) {
  kvm_lapic_state l{};
  if (ioctl(vcpuFd, KVM_GET_LAPIC, &l) < 0) return err = sysErr("KVM_GET_LAPIC"), false;
  auto setMode = [&](uint32_t reg, uint32_t mode) {
    uint32_t v;
    memcpy(&v, l.regs + reg, 4);
    v = (v & ~0x700u) | (mode << 8);
    memcpy(l.regs + reg, &v, 4);
  };
  setMode(kApicLvtLint0, kApicModeExtInt);
  setMode(kApicLvtLint1, kApicModeNmi);
  if (ioctl(vcpuFd, KVM_SET_LAPIC, &l) < 0) return err = sysErr("KVM_SET_LAPIC"), false;
  return true;
}

void Kvm::setIrq(uint32_t irq, int level) {
  kvm_irq_level l{};
  l.irq = irq;
  l.level = level;
  ioctl(vmFd_, KVM_IRQ_LINE, &l);
}

bool Kvm::ioeventfd(int efd, uint16_t port, bool deassign) {
  kvm_ioeventfd io{};
  io.addr = port;
  io.len = 2;
  io.fd = efd;
  io.flags = KVM_IOEVENTFD_FLAG_PIO | (deassign ? KVM_IOEVENTFD_FLAG_DEASSIGN : 0);
  return ioctl(vmFd_, KVM_IOEVENTFD, &io) == 0;
}

}  // namespace runner
