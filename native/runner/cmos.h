// The MC146818 RTC/CMOS at 0x70/0x71, enough for Linux to read the time: the host's UTC
// time in BCD, 24-hour mode, never "update in progress".
#pragma once
#include <cstdint>
#include <ctime>

namespace runner {

class Cmos {
 public:
  void write(uint16_t port, uint8_t v) {
    if (port == 0x70) index_ = v & 0x7f;
  }
  uint8_t read(uint16_t port) const {
    if (port == 0x70) return index_;
    time_t now = time(nullptr);
    tm t;
    gmtime_r(&now, &t);
    auto bcd = [](int v) { return static_cast<uint8_t>((v / 10) << 4 | (v % 10)); };
    switch (index_) {
      case 0x00: return bcd(t.tm_sec);
      case 0x02: return bcd(t.tm_min);
      case 0x04: return bcd(t.tm_hour);
      case 0x06: return bcd(t.tm_wday + 1);
      case 0x07: return bcd(t.tm_mday);
      case 0x08: return bcd(t.tm_mon + 1);
      case 0x09: return bcd(t.tm_year % 100);
      case 0x32: return bcd(t.tm_year / 100 + 19);  // century
      case 0x0a: return 0x26;                        // divider on, UIP clear
      case 0x0b: return 0x02;                        // 24-hour, BCD
      case 0x0d: return 0x80;                        // RAM and time valid
      default: return 0;
    }
  }

 private:
  uint8_t index_ = 0;
};

}  // namespace runner
