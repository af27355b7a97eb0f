// A legacy (virtio 0.9.5) virtio-pci block device: I/O BAR 0 with the legacy header and
// the blk config, INTx on a fixed line, one split virtqueue, QUEUE_NOTIFY as an ioeventfd.
// Registers are touched by the vCPU thread; the queue is walked by the I/O thread.
#pragma once
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>
#include "backend.h"
#include "guest_memory.h"
#include "kvm.h"
#include "pci.h"

namespace runner {

class VirtioBlk : public PciDevice {
 public:
  VirtioBlk(Kvm& kvm, std::unique_ptr<Backend> backend, bool readOnly, std::string id, uint16_t ioBase,
            uint8_t irq, std::function<void(const std::string&)> fail);
  ~VirtioBlk() override;
  // Opens the notify eventfd and registers it (the backend is opened by its user).
  bool open(std::string& err);
  // vCPU thread: a PIO access; false when the port is not in this device's BAR.
  bool pio(uint16_t port, bool write, uint8_t* data, int size);
  int notifyFd() const { return notifyFd_; }
  Backend& backend() { return *backend_; }
  // I/O thread: the guest kicked the queue / the backend has replies.
  void onNotify();
  void onBackendReadable();

 private:
  struct Queue {  // the layout the I/O thread works on, copied under mu_
    uint32_t pfn = 0;
    uint32_t generation = 0;
  };
  void decodingChanged() override;
  uint32_t readRegister(uint16_t off, int size);
  void writeRegister(uint16_t off, int size, uint32_t v);
  void resetLocked();
  bool takeRequest(uint16_t head, BlkRequest& r, std::string& err);
  void finish(BlkRequest* r, uint8_t status);
  void raiseIrq();

  Kvm& kvm_;
  const GuestMemory& mem_;
  std::unique_ptr<Backend> backend_;
  bool readOnly_;
  std::string id_;
  uint8_t irq_;
  std::function<void(const std::string&)> fail_;
  int notifyFd_ = -1;
  uint16_t notifyPort_ = 0;  // where the ioeventfd is registered, 0 for nowhere

  std::mutex mu_;  // guards the registers below
  uint32_t guestFeatures_ = 0, pfn_ = 0, generation_ = 0;
  uint16_t queueSel_ = 0;
  uint8_t status_ = 0, isr_ = 0;

  // I/O thread state.
  uint32_t ioGeneration_ = ~0u, ioPfn_ = 0;
  uint16_t lastAvail_ = 0, usedIdx_ = 0;
  std::vector<std::unique_ptr<BlkRequest>> inflight_;  // by descriptor head, current generation
  std::vector<std::unique_ptr<BlkRequest>> orphans_;   // in flight across a reset
};

}  // namespace runner
