#include "virtio_blk.h"
#include <sys/eventfd.h>
#include <unistd.h>
#include <algorithm>
#include <cstring>
#include "virtio_blk_defs.h"

namespace runner {

namespace {

constexpr uint16_t kQueueNum = 256;
constexpr uint64_t kDescBytes = 16 * kQueueNum;
constexpr uint64_t kAvailBytes = 4 + 2 * kQueueNum + 2;
constexpr uint64_t kUsedOffset = (kDescBytes + kAvailBytes + kVringAlign - 1) & ~uint64_t{kVringAlign - 1};
constexpr uint64_t kUsedBytes = 4 + 8 * kQueueNum + 2;
constexpr uint64_t kMaxRequestBytes = 32u << 20;  // NBD's limit; Linux never sends more than a few MiB
constexpr uint32_t kSegMax = 126;
constexpr uint32_t kSectorSize = 512;
constexpr uint8_t kStatusDriverOk = 4;

uint16_t load16(const uint8_t* p) {
  uint16_t v;
  memcpy(&v, p, 2);
  return v;
}

}  // namespace

VirtioBlk::VirtioBlk(Kvm& kvm, std::unique_ptr<Backend> backend, bool readOnly, std::string id, uint16_t ioBase,
                     uint8_t irq, std::function<void(const std::string&)> fail)
    : PciDevice(kVirtioVendor, kVirtioBlkLegacyDevice, 0x010000 /* mass storage, SCSI */, 0),
      kvm_(kvm), mem_(kvm.mem), backend_(std::move(backend)), readOnly_(readOnly), id_(std::move(id)), irq_(irq),
      fail_(std::move(fail)), inflight_(kQueueNum) {
  uint16_t subVendor = kVirtioVendor, subDevice = kVirtioSubsysBlk;
  memcpy(config_ + 0x2c, &subVendor, 2);
  memcpy(config_ + 0x2e, &subDevice, 2);
  config_[0x3c] = irq;  // INTERRUPT_LINE as firmware would leave it
  config_[0x3d] = 1;    // INTA#
  setIoBar(0, ioBase, kVpBarSize);
  backend_->complete = [this](BlkRequest* r, uint8_t status) { finish(r, status); };
}

VirtioBlk::~VirtioBlk() {
  if (notifyFd_ >= 0) {
    if (notifyPort_) kvm_.ioeventfd(notifyFd_, notifyPort_, true);
    close(notifyFd_);
  }
}

bool VirtioBlk::open(std::string& err) {
  notifyFd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (notifyFd_ < 0) return err = "eventfd failed", false;
  decodingChanged();
  return true;
}

void VirtioBlk::decodingChanged() {
  uint16_t want = ioEnabled() && barAddress(0) ? static_cast<uint16_t>(barAddress(0) + kVpQueueNotify) : 0;
  if (want == notifyPort_) return;
  if (notifyPort_) kvm_.ioeventfd(notifyFd_, notifyPort_, true);
  // Without an ioeventfd the notify write still works: it exits to pio() below.
  notifyPort_ = want && kvm_.ioeventfd(notifyFd_, want, false) ? want : 0;
}

bool VirtioBlk::pio(uint16_t port, bool write, uint8_t* data, int size) {
  uint32_t base = barAddress(0);
  if (!ioEnabled() || !base || port < base || port >= base + kVpBarSize) return false;
  uint16_t off = port - base;
  if (write) {
    uint32_t v = 0;
    memcpy(&v, data, size);
    writeRegister(off, size, v);
  } else {
    uint32_t v = readRegister(off, size);
    memcpy(data, &v, size);
  }
  return true;
}

uint32_t VirtioBlk::readRegister(uint16_t off, int size) {
  std::lock_guard<std::mutex> g(mu_);
  uint8_t regs[kVpBarSize] = {};
  uint32_t host = kBlkFSegMax | kBlkFBlkSize | kBlkFFlush | (readOnly_ ? kBlkFRo : 0);
  uint16_t num = queueSel_ == 0 ? kQueueNum : 0;
  uint64_t capacity = backend_->size() / kSectorSize;
  uint32_t segMax = kSegMax, blkSize = kSectorSize;
  memcpy(regs + kVpHostFeatures, &host, 4);
  memcpy(regs + kVpGuestFeatures, &guestFeatures_, 4);
  if (queueSel_ == 0) memcpy(regs + kVpQueuePfn, &pfn_, 4);
  memcpy(regs + kVpQueueNum, &num, 2);
  memcpy(regs + kVpQueueSel, &queueSel_, 2);
  regs[kVpStatus] = status_;
  regs[kVpIsr] = isr_;
  memcpy(regs + kVpConfig, &capacity, 8);        // capacity (512-byte sectors)
  memcpy(regs + kVpConfig + 12, &segMax, 4);     // seg_max
  memcpy(regs + kVpConfig + 20, &blkSize, 4);    // blk_size
  if (off == kVpIsr && size == 1) {
    isr_ = 0;  // reading ISR acknowledges the interrupt
    kvm_.setIrq(irq_, 0);
  }
  uint32_t v = 0;
  if (off + size <= static_cast<int>(kVpBarSize)) memcpy(&v, regs + off, size);
  return v;
}

void VirtioBlk::writeRegister(uint16_t off, int size, uint32_t v) {
  if (off == kVpQueueNotify) {
    uint64_t one = 1;  // the ioeventfd is not registered: kick the I/O thread by hand
    if (write(notifyFd_, &one, 8) < 0) {}
    return;
  }
  std::lock_guard<std::mutex> g(mu_);
  if (off == kVpGuestFeatures && size == 4) guestFeatures_ = v & (kBlkFSegMax | kBlkFBlkSize | kBlkFFlush | kBlkFRo);
  else if (off == kVpQueuePfn && size == 4 && queueSel_ == 0) {
    pfn_ = v;
    generation_++;
  } else if (off == kVpQueueSel && size == 2) queueSel_ = v;
  else if (off == kVpStatus && size == 1) {
    bool ready = !(status_ & kStatusDriverOk) && (v & kStatusDriverOk);
    status_ = v;
    if (status_ == 0) resetLocked();
    uint64_t one = 1;  // a kick that came before DRIVER_OK was dropped: look at the queue again
    if (ready && write(notifyFd_, &one, 8) < 0) {}
  }
}

void VirtioBlk::resetLocked() {
  guestFeatures_ = 0;
  pfn_ = 0;
  queueSel_ = 0;
  isr_ = 0;
  generation_++;
  kvm_.setIrq(irq_, 0);
}

void VirtioBlk::onNotify() {
  uint64_t n;
  if (read(notifyFd_, &n, 8) < 0) {}
  Queue q;
  {
    std::lock_guard<std::mutex> g(mu_);
    if (!(status_ & kStatusDriverOk)) return;
    q.pfn = pfn_;
    q.generation = generation_;
  }
  if (q.generation != ioGeneration_) {
    ioGeneration_ = q.generation;
    ioPfn_ = q.pfn;
    lastAvail_ = usedIdx_ = 0;
    for (auto& r : inflight_)
      if (r) orphans_.push_back(std::move(r));
  }
  if (!ioPfn_) return;
  uint64_t base = uint64_t{ioPfn_} * kVringAlign;
  const uint8_t* avail = mem_.ptr(base + kDescBytes, kAvailBytes);
  if (!mem_.ptr(base, kUsedOffset + kUsedBytes) || !avail) return fail_("virtio-blk: the virtqueue is outside guest RAM");
  uint16_t availIdx = __atomic_load_n(reinterpret_cast<const uint16_t*>(avail + 2), __ATOMIC_ACQUIRE);
  if (static_cast<uint16_t>(availIdx - lastAvail_) > kQueueNum)
    return fail_("virtio-blk: the available ring index moved by more than the queue size");
  while (lastAvail_ != availIdx) {
    uint16_t head = load16(avail + 4 + 2 * (lastAvail_ % kQueueNum));
    lastAvail_++;
    if (head >= kQueueNum) return fail_("virtio-blk: descriptor head " + std::to_string(head) + " is out of range");
    if (inflight_[head]) return fail_("virtio-blk: descriptor head " + std::to_string(head) + " is already in flight");
    auto r = std::make_unique<BlkRequest>();
    std::string err;
    if (!takeRequest(head, *r, err)) return fail_(err);
    BlkRequest* raw = r.get();
    inflight_[head] = std::move(r);
    if (raw->settled < 0) backend_->submit(raw);
    else finish(raw, static_cast<uint8_t>(raw->settled));
  }
}

// Walks the descriptor chain at `head` and parses the virtio-blk request in it.
bool VirtioBlk::takeRequest(uint16_t head, BlkRequest& r, std::string& err) {
  uint64_t base = uint64_t{ioPfn_} * kVringAlign;
  const uint8_t* desc = mem_.ptr(base, kDescBytes);
  struct Seg { uint8_t* p; uint32_t len; bool writable; };
  std::vector<Seg> segs;
  uint16_t i = head;
  for (uint32_t n = 0;; n++) {
    if (n >= kQueueNum) return err = "virtio-blk: descriptor chain loops", false;
    const uint8_t* d = desc + 16 * i;
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
    memcpy(&addr, d, 8);
    memcpy(&len, d + 8, 4);
    memcpy(&flags, d + 12, 2);
    memcpy(&next, d + 14, 2);
    if (flags & kVringDescFIndirect) return err = "virtio-blk: indirect descriptor (not negotiated)", false;
    uint8_t* p = mem_.ptr(addr, len);
    if (!p || !len) return err = "virtio-blk: descriptor points outside guest RAM", false;
    segs.push_back({p, len, (flags & kVringDescFWrite) != 0});
    if (!(flags & kVringDescFNext)) break;
    if (next >= kQueueNum) return err = "virtio-blk: descriptor next index out of range", false;
    i = next;
  }
  r.head = head;
  r.generation = ioGeneration_;
  Seg& last = segs.back();
  if (!last.writable) return err = "virtio-blk: request has no writable status byte", false;
  r.status = last.p + last.len - 1;
  r.settled = kBlkStatusIoErr;
  uint8_t hdr[16];
  size_t got = 0;
  for (const Seg& s : segs) {  // the 16-byte header may span descriptors
    if (got == sizeof hdr) break;
    if (s.writable) return true;  // header short: status stays IOERR
    size_t take = std::min<size_t>(s.len, sizeof hdr - got);
    memcpy(hdr + got, s.p, take);
    got += take;
  }
  if (got < sizeof hdr) return true;
  uint32_t type;
  uint64_t sector;
  memcpy(&type, hdr, 4);
  memcpy(&sector, hdr + 8, 8);
  // Data: everything after the header and before the status byte, all in one direction.
  uint64_t skip = sizeof hdr, total = 0;
  bool allWritable = true, allReadable = true;
  for (size_t k = 0; k < segs.size(); k++) {
    uint8_t* p = segs[k].p;
    uint64_t len = segs[k].len;
    if (k == segs.size() - 1) len--;
    uint64_t drop = std::min(skip, len);
    skip -= drop;
    if (len - drop == 0) continue;
    r.iov.push_back({p + drop, static_cast<size_t>(len - drop)});
    total += len - drop;
    (segs[k].writable ? allReadable : allWritable) = false;
  }
  r.length = total;
  r.offset = sector * kSectorSize;
  bool inRange = sector < (uint64_t{1} << 54) && r.offset <= backend_->size() && total <= backend_->size() - r.offset;
  switch (type) {
    case kBlkTIn:
    case kBlkTOut: {
      bool in = type == kBlkTIn;
      if (total % kSectorSize || total > kMaxRequestBytes || !inRange || !(in ? allWritable : allReadable)) return true;
      if (!in && readOnly_) return true;  // a read-only disk refuses OUT
      r.op = in ? BlkOp::Read : BlkOp::Write;
      if (in) r.usedLen = static_cast<uint32_t>(total);
      r.settled = -1;
      return true;
    }
    case kBlkTFlush:
      r.op = BlkOp::Flush;
      r.settled = -1;
      return true;
    case kBlkTGetId: {
      if (!allWritable) return true;
      uint8_t id[kBlkIdBytes] = {};  // zero-padded, not NUL-terminated when 20 bytes long
      memcpy(id, id_.data(), std::min<size_t>(id_.size(), kBlkIdBytes));
      size_t left = std::min<size_t>(kBlkIdBytes, total), done = 0;
      for (const iovec& v : r.iov) {
        size_t n = std::min(v.iov_len, left - done);
        memcpy(v.iov_base, id + done, n);
        done += n;
      }
      r.usedLen = static_cast<uint32_t>(left);
      r.settled = kBlkStatusOk;
      return true;
    }
    default:
      r.settled = kBlkStatusUnsupp;
      return true;
  }
}

void VirtioBlk::finish(BlkRequest* r, uint8_t status) {
  *r->status = status;
  std::unique_ptr<BlkRequest> owned;
  if (r->generation == ioGeneration_ && inflight_[r->head].get() == r) {
    owned = std::move(inflight_[r->head]);
  } else {  // completed after a reset: nobody waits for it
    for (auto& o : orphans_)
      if (o.get() == r) owned = std::move(o);
    orphans_.erase(std::remove(orphans_.begin(), orphans_.end(), nullptr), orphans_.end());
    return;
  }
  uint64_t base = uint64_t{ioPfn_} * kVringAlign;
  uint8_t* used = mem_.ptr(base + kUsedOffset, kUsedBytes);
  if (!used) return;
  uint8_t* e = used + 4 + 8 * (usedIdx_ % kQueueNum);
  uint32_t id = r->head, len = status == kBlkStatusOk ? r->usedLen + 1 : 1;
  memcpy(e, &id, 4);
  memcpy(e + 4, &len, 4);
  usedIdx_++;
  __atomic_store_n(reinterpret_cast<uint16_t*>(used + 2), usedIdx_, __ATOMIC_RELEASE);
  raiseIrq();
}

void VirtioBlk::raiseIrq() {
  std::lock_guard<std::mutex> g(mu_);
  if (generation_ != ioGeneration_) return;
  isr_ |= 1;
  kvm_.setIrq(irq_, 1);
}

void VirtioBlk::onBackendReadable() {
  std::string err;
  if (!backend_->onReadable(err)) fail_("virtio-blk: " + err);
}

}  // namespace runner
