// A 16550A-style UART (8250 family) at 0x3f8 / IRQ 4: transmit is instant (bytes go to
// `output`), receive takes bytes from the host; THRE and receive-data interrupts.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>

namespace runner {

constexpr uint16_t kUartBase = 0x3f8;
constexpr uint32_t kUartIrq = 4;

class Uart {
 public:
  Uart(std::function<void(int)> setIrq, std::function<void(uint8_t)> output)
      : setIrq_(std::move(setIrq)), output_(std::move(output)) {}
  uint8_t read(uint16_t reg);
  void write(uint16_t reg, uint8_t v);
  // Bytes for the guest to read (any thread).
  void receive(const uint8_t* data, size_t n);

 private:
  void update(bool newCause);  // recomputes the interrupt line; mu_ held
  std::mutex mu_;
  std::function<void(int)> setIrq_;
  std::function<void(uint8_t)> output_;
  std::deque<uint8_t> rx_;
  uint8_t ier_ = 0, lcr_ = 0, mcr_ = 0, scr_ = 0, fcr_ = 0, dll_ = 12, dlm_ = 0;
  bool threPending_ = false;  // THR empty interrupt not yet acknowledged by an IIR read
  int level_ = 0;
};

}  // namespace runner
