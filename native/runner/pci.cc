#include "pci.h"

namespace runner {

namespace {
constexpr uint16_t kIntelVendor = 0x8086, kI440fxDevice = 0x1237;
constexpr uint32_t kClassHostBridge = 0x060000;
constexpr uint8_t kRegCommand = 0x04, kRegBar0 = 0x10, kRegIntLine = 0x3c;
}  // namespace

PciDevice::PciDevice(uint16_t vendor, uint16_t device, uint32_t classCode, uint8_t revision) {
  memcpy(config_ + 0x00, &vendor, 2);
  memcpy(config_ + 0x02, &device, 2);
  config_[0x08] = revision;
  config_[0x09] = classCode & 0xff;
  config_[0x0a] = (classCode >> 8) & 0xff;
  config_[0x0b] = (classCode >> 16) & 0xff;
  wmask_[kRegCommand] = 0x07;      // I/O, memory, bus master
  wmask_[kRegCommand + 1] = 0x04;  // INTx disable
  wmask_[kRegIntLine] = 0xff;
}

uint32_t PciDevice::readConfig(uint8_t reg, int size) {
  uint32_t v = 0;
  memcpy(&v, config_ + reg, size);
  return v;
}

void PciDevice::writeConfig(uint8_t reg, int size, uint32_t v) {
  bool decoding = false;
  for (int i = 0; i < size; i++) {
    uint8_t r = reg + i, b = (v >> (8 * i)) & 0xff;
    config_[r] = (config_[r] & ~wmask_[r]) | (b & wmask_[r]);
    if (wmask_[r] && (r == kRegCommand || (r >= kRegBar0 && r < kRegBar0 + 24))) decoding = true;
  }
  if (decoding) decodingChanged();
}

void PciDevice::setIoBar(int bar, uint16_t addr, uint32_t size) {
  uint32_t v = (addr & ~(size - 1)) | 0x1, mask = ~(size - 1) & 0xfffc;
  uint8_t reg = kRegBar0 + 4 * bar;
  memcpy(config_ + reg, &v, 4);
  for (int i = 0; i < 4; i++) wmask_[reg + i] = (mask >> (8 * i)) & 0xff;
  wmask_[reg] &= 0xfc;
  config_[kRegCommand] |= 0x01;
}

uint32_t PciDevice::barAddress(int bar) const {
  uint32_t v;
  memcpy(&v, config_ + kRegBar0 + 4 * bar, 4);
  return v & ~0x3u;
}

PciBus::PciBus() : hostBridge_(kIntelVendor, kI440fxDevice, kClassHostBridge, 0) { devices_.push_back(&hostBridge_); }

bool PciBus::pio(uint16_t port, bool write, uint8_t* data, int size) {
  if (port < kPciConfigAddress || port >= kPciConfigData + 4) return false;
  std::lock_guard<std::mutex> g(mu_);
  if (port == kPciConfigAddress) {
    // Only full-width accesses reach the address latch (the type-1 probe pokes 0xCFB).
    if (size != 4) return true;
    if (write) memcpy(&address_, data, 4);
    else memcpy(data, &address_, 4);
    return true;
  }
  if (port < kPciConfigData) {
    if (!write) memset(data, 0xff, size);
    return true;
  }
  uint8_t reg = (address_ & 0xfc) + (port - kPciConfigData);
  uint32_t bus = (address_ >> 16) & 0xff, slot = (address_ >> 11) & 0x1f, fn = (address_ >> 8) & 0x7;
  PciDevice* d = (address_ & 0x80000000u) && bus == 0 && fn == 0 && slot < devices_.size() ? devices_[slot] : nullptr;
  if (size > 256 - reg) size = 256 - reg;
  if (!d) {
    if (!write) memset(data, 0xff, size);
    return true;
  }
  if (write) {
    uint32_t v = 0;
    memcpy(&v, data, size);
    d->writeConfig(reg, size, v);
  } else {
    uint32_t v = d->readConfig(reg, size);
    memcpy(data, &v, size);
  }
  return true;
}

}  // namespace runner
