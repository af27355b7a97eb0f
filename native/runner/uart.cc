#include "uart.h"

namespace runner {

namespace {
// Register numbers and bits (8250/16550 data sheet).
constexpr uint16_t kRbrThr = 0, kIer = 1, kIirFcr = 2, kLcr = 3, kMcr = 4, kLsr = 5, kMsr = 6, kScr = 7;
constexpr uint8_t kIerRda = 0x01, kIerThri = 0x02;
constexpr uint8_t kIirNone = 0x01, kIirThri = 0x02, kIirRda = 0x04, kIirFifo = 0xc0;
constexpr uint8_t kLcrDlab = 0x80, kMcrLoop = 0x10, kFcrEnable = 0x01, kFcrClearRx = 0x02;
constexpr uint8_t kLsrDr = 0x01, kLsrThre = 0x20, kLsrTemt = 0x40;
constexpr size_t kRxMax = 4096;  // bytes kept for a guest that does not read
}  // namespace

uint8_t Uart::read(uint16_t reg) {
  std::lock_guard<std::mutex> g(mu_);
  uint8_t v = 0;
  switch (reg) {
    case kRbrThr:
      if (lcr_ & kLcrDlab) return dll_;
      if (!rx_.empty()) {
        v = rx_.front();
        rx_.pop_front();
      }
      break;
    case kIer:
      return lcr_ & kLcrDlab ? dlm_ : ier_;
    case kIirFcr:
      v = (fcr_ & kFcrEnable) ? kIirFifo : 0;
      if ((ier_ & kIerRda) && !rx_.empty()) v |= kIirRda;
      else if ((ier_ & kIerThri) && threPending_) {
        v |= kIirThri;
        threPending_ = false;  // reading IIR acknowledges THRE
      } else v |= kIirNone;
      break;
    case kLcr: return lcr_;
    case kMcr: return mcr_;
    case kLsr: return kLsrThre | kLsrTemt | (rx_.empty() ? 0 : kLsrDr);
    case kMsr:
      // Loopback wires the modem outputs to the inputs: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
      if (mcr_ & kMcrLoop) return ((mcr_ & 0x01) << 5) | ((mcr_ & 0x02) << 3) | ((mcr_ & 0x04) << 4) | ((mcr_ & 0x08) << 4);
      return 0xb0;  // DCD, DSR, CTS
    case kScr: return scr_;
  }
  update(false);
  return v;
}

void Uart::write(uint16_t reg, uint8_t v) {
  std::lock_guard<std::mutex> g(mu_);
  switch (reg) {
    case kRbrThr:
      if (lcr_ & kLcrDlab) {
        dll_ = v;
        return;
      }
      if (mcr_ & kMcrLoop) {
        if (rx_.size() < kRxMax) rx_.push_back(v);
      } else output_(v);
      threPending_ = true;
      return update(true);
    case kIer:
      if (lcr_ & kLcrDlab) {
        dlm_ = v;
        return;
      }
      ier_ = v & 0x0f;
      if (ier_ & kIerThri) threPending_ = true;  // THR is always empty
      return update(true);
    case kIirFcr:
      fcr_ = v;
      if (v & kFcrClearRx) rx_.clear();
      break;
    case kLcr: lcr_ = v; break;
    case kMcr: mcr_ = v & 0x1f; break;
    case kScr: scr_ = v; break;
  }
  update(false);
}

void Uart::receive(const uint8_t* data, size_t n) {
  std::lock_guard<std::mutex> g(mu_);
  for (size_t i = 0; i < n && rx_.size() < kRxMax; i++) rx_.push_back(data[i]);
  update(true);
}

void Uart::update(bool newCause) {
  int want = ((ier_ & kIerRda) && !rx_.empty()) || ((ier_ & kIerThri) && threPending_);
  // The PIC line is edge-triggered: a new cause while the line is up lowers it first.
  if (want && level_ && newCause) setIrq_(0);
  if (want != level_ || (want && newCause)) setIrq_(want);
  level_ = want;
}

}  // namespace runner
