// PCI configuration mechanism #1 (ports 0xCF8 address, 0xCFC-0xCFF data) on bus 0, with
// a host bridge at 00:00.0 (Linux's sanity check wants one) and type-0 devices.
#pragma once
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

namespace runner {

constexpr uint16_t kPciConfigAddress = 0xcf8, kPciConfigData = 0xcfc;

class PciDevice {
 public:
  PciDevice(uint16_t vendor, uint16_t device, uint32_t classCode, uint8_t revision);
  virtual ~PciDevice() = default;
  uint32_t readConfig(uint8_t reg, int size);
  void writeConfig(uint8_t reg, int size, uint32_t v);

 protected:
  // An I/O BAR of `size` bytes (a power of two) at `addr`, decoding enabled.
  void setIoBar(int bar, uint16_t addr, uint32_t size);
  uint32_t barAddress(int bar) const;
  bool ioEnabled() const { return config_[0x04] & 0x01; }
  // Called after a write changed the command register or a BAR.
  virtual void decodingChanged() {}
  uint8_t config_[256]{};
  uint8_t wmask_[256]{};
};

class PciBus {
 public:
  PciBus();
  void add(PciDevice* d) { devices_.push_back(d); }  // slot = index (slot 0: host bridge)
  // A PIO access to 0xCF8-0xCFF; false when the port is not the bus's.
  bool pio(uint16_t port, bool write, uint8_t* data, int size);

 private:
  std::mutex mu_;
  uint32_t address_ = 0;
  PciDevice hostBridge_;
  std::vector<PciDevice*> devices_;
};

}  // namespace runner
