// The KVM side of a VM: /dev/kvm, the VM with its RAM slots, in-kernel irqchip and PIT,
// and one vCPU put straight into 64-bit long mode for a bzImage's 64-bit entry.
#pragma once
#include <linux/kvm.h>
#include <cstdint>
#include <string>
#include "guest_memory.h"

namespace runner {

struct BootState;

class Kvm {
 public:
  ~Kvm();
  // Each returns false with `err` set; the Kvm object then owns whatever was opened.
  bool open(std::string& err);
  bool createVm(uint64_t memBytes, std::string& err);
  bool createVcpu(const BootState& boot, bool maskXsave, std::string& err);
  // Level of an interrupt line of the in-kernel PIC (callable from any thread).
  void setIrq(uint32_t irq, int level);
  // Registers (or with deassign, removes) an eventfd signalled by a 2-byte PIO write.
  bool ioeventfd(int efd, uint16_t port, bool deassign);

  GuestMemory mem;
  int vcpuFd = -1;
  kvm_run* run = nullptr;

 private:
  bool setupCpuid(bool maskXsave, std::string& err);
  bool setupRegs(const BootState& boot, std::string& err);
  bool setupLapic(std::string& err);
  int kvmFd_ = -1;
  int vmFd_ = -1;
  size_t runSize_ = 0;
};

// Opens /dev/kvm and checks the API version: "" when usable, else why not.
std::string kvmUsable();

}  // namespace runner
