// An NBD export as a disk: fixed newstyle handshake with NBD_OPT_GO, then pipelined
// READ/WRITE/FLUSH with simple replies (doc/proto.md of the NBD project). The socket is
// blocking; the I/O thread polls it and reads one reply per wake-up.
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <cerrno>
#include <climits>
#include <cstring>
#include <unordered_map>
#include "backend.h"
#include "virtio_blk_defs.h"

namespace runner {

namespace {

constexpr uint64_t kNbdMagic = 0x4e42444d41474943ull;  // "NBDMAGIC"
constexpr uint64_t kIHaveOpt = 0x49484156454f5054ull;  // "IHAVEOPT"
constexpr uint64_t kOptReplyMagic = 0x3e889045565a9ull;
constexpr uint32_t kRequestMagic = 0x25609513, kSimpleReplyMagic = 0x67446698;
constexpr uint16_t kFlagFixedNewstyle = 1, kFlagNoZeroes = 2;
constexpr uint32_t kOptGo = 7, kRepAck = 1, kRepInfo = 3, kRepErrBit = 0x80000000u;
constexpr uint16_t kInfoExport = 0;
constexpr uint16_t kTransReadOnly = 1 << 1, kTransSendFlush = 1 << 2;
constexpr uint16_t kCmdRead = 0, kCmdWrite = 1, kCmdDisc = 2, kCmdFlush = 3;
constexpr uint32_t kMaxOptReply = 64 * 1024;
constexpr int kHandshakeTimeoutSec = 30;

void put16(uint8_t* p, uint16_t v) { p[0] = v >> 8; p[1] = v; }
void put32(uint8_t* p, uint32_t v) { put16(p, v >> 16); put16(p + 2, v); }
void put64(uint8_t* p, uint64_t v) { put32(p, v >> 32); put32(p + 4, v); }
uint16_t get16(const uint8_t* p) { return p[0] << 8 | p[1]; }
uint32_t get32(const uint8_t* p) { return uint32_t{get16(p)} << 16 | get16(p + 2); }
uint64_t get64(const uint8_t* p) { return uint64_t{get32(p)} << 32 | get32(p + 4); }

// Sends or receives all of an iovec array; false on EOF or error.
bool transferAll(int fd, std::vector<iovec> iov, bool send) {
  size_t i = 0;
  while (i < iov.size()) {
    msghdr m{};
    m.msg_iov = &iov[i];
    m.msg_iovlen = std::min<size_t>(iov.size() - i, IOV_MAX);
    ssize_t n = send ? sendmsg(fd, &m, MSG_NOSIGNAL) : recvmsg(fd, &m, MSG_WAITALL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    while (n > 0) {
      size_t step = std::min<size_t>(n, iov[i].iov_len);
      iov[i].iov_base = static_cast<uint8_t*>(iov[i].iov_base) + step;
      iov[i].iov_len -= step;
      n -= step;
      if (iov[i].iov_len == 0) i++;
    }
    while (i < iov.size() && iov[i].iov_len == 0) i++;
  }
  return true;
}
bool sendAll(int fd, const void* p, size_t n) { return transferAll(fd, {{const_cast<void*>(p), n}}, true); }
bool recvAll(int fd, void* p, size_t n) { return transferAll(fd, {{p, n}}, false); }

class NbdBackend : public Backend {
 public:
  NbdBackend(std::string socketPath, std::string host, int port, std::string exportName, bool readOnly)
      : socketPath_(std::move(socketPath)), host_(std::move(host)), port_(port), export_(std::move(exportName)), readOnly_(readOnly) {}
  ~NbdBackend() override {
    if (fd_ >= 0) {
      uint8_t h[28] = {};
      put32(h, kRequestMagic);
      put16(h + 6, kCmdDisc);
      send(fd_, h, sizeof h, MSG_NOSIGNAL | MSG_DONTWAIT);
      close(fd_);
    }
  }
  bool open(std::string& err) override {
    std::string where = socketPath_.empty() ? "nbd://" + host_ + ":" + std::to_string(port_) : "nbd+unix socket " + socketPath_;
    if (!connectSocket(err) || !handshake(err)) {
      err = where + ": " + err;
      return false;
    }
    timeval none{};  // the transmission phase waits as long as it must; stop() shuts the socket down
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof none);
    return true;
  }
  uint64_t size() const override { return size_; }
  int pollFd() const override { return fd_; }
  void interrupt() override {
    if (fd_ >= 0) shutdown(fd_, SHUT_RDWR);
  }

  void submit(BlkRequest* r) override {
    if (r->op == BlkOp::Flush && !(flags_ & kTransSendFlush)) return complete(r, kBlkStatusOk);
    uint64_t handle = nextHandle_++;
    uint8_t h[28];
    put32(h, kRequestMagic);
    put16(h + 4, 0);
    put16(h + 6, r->op == BlkOp::Read ? kCmdRead : r->op == BlkOp::Write ? kCmdWrite : kCmdFlush);
    put64(h + 8, handle);
    put64(h + 16, r->op == BlkOp::Flush ? 0 : r->offset);
    put32(h + 24, r->op == BlkOp::Flush ? 0 : static_cast<uint32_t>(r->length));
    std::vector<iovec> iov{{h, sizeof h}};
    if (r->op == BlkOp::Write) iov.insert(iov.end(), r->iov.begin(), r->iov.end());
    if (broken_ || !transferAll(fd_, iov, true)) {
      broken_ = true;
      return complete(r, kBlkStatusIoErr);
    }
    inflight_[handle] = r;
  }

  bool onReadable(std::string& err) override {
    uint8_t h[16];
    if (!recvAll(fd_, h, sizeof h)) return err = "NBD server closed the connection", false;
    if (get32(h) != kSimpleReplyMagic) return err = "NBD server sent a bad reply magic", false;
    auto it = inflight_.find(get64(h + 8));
    if (it == inflight_.end()) return err = "NBD server replied to an unknown handle", false;
    BlkRequest* r = it->second;
    inflight_.erase(it);
    uint32_t error = get32(h + 4);
    if (!error && r->op == BlkOp::Read && !transferAll(fd_, r->iov, false)) return err = "NBD server closed the connection mid-read", false;
    complete(r, error ? kBlkStatusIoErr : kBlkStatusOk);
    return true;
  }

 private:
  bool connectSocket(std::string& err) {
    if (!socketPath_.empty()) {
      sockaddr_un a{};
      a.sun_family = AF_UNIX;
      if (socketPath_.size() >= sizeof a.sun_path) return err = "socket path too long", false;
      memcpy(a.sun_path, socketPath_.c_str(), socketPath_.size() + 1);
      fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd_ < 0 || connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) return err = std::string("cannot connect: ") + strerror(errno), false;
    } else {
      addrinfo hints{}, *res = nullptr;
      hints.ai_socktype = SOCK_STREAM;
      int e = getaddrinfo(host_.c_str(), std::to_string(port_).c_str(), &hints, &res);
      if (e) return err = std::string("cannot resolve: ") + gai_strerror(e), false;
      for (addrinfo* ai = res; ai; ai = ai->ai_next) {
        fd_ = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd_ >= 0 && connect(fd_, ai->ai_addr, ai->ai_addrlen) == 0) break;
        err = std::string("cannot connect: ") + strerror(errno);
        if (fd_ >= 0) close(fd_);
        fd_ = -1;
      }
      freeaddrinfo(res);
      if (fd_ < 0) return false;
      int one = 1;
      setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    timeval t{kHandshakeTimeoutSec, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &t, sizeof t);
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &t, sizeof t);
    return true;
  }

  bool handshake(std::string& err) {
    uint8_t greet[18];
    if (!recvAll(fd_, greet, sizeof greet)) return err = "no NBD greeting", false;
    if (get64(greet) != kNbdMagic || get64(greet + 8) != kIHaveOpt) return err = "not a newstyle NBD server", false;
    uint16_t sflags = get16(greet + 16);
    if (!(sflags & kFlagFixedNewstyle)) return err = "NBD server is not fixed-newstyle", false;
    uint8_t cflags[4];
    put32(cflags, kFlagFixedNewstyle | (sflags & kFlagNoZeroes));
    if (export_.size() > 4096) return err = "export name too long", false;
    std::vector<uint8_t> opt(16 + 4 + export_.size() + 2);
    put64(opt.data(), kIHaveOpt);
    put32(opt.data() + 8, kOptGo);
    put32(opt.data() + 12, static_cast<uint32_t>(opt.size() - 16));
    put32(opt.data() + 16, static_cast<uint32_t>(export_.size()));
    memcpy(opt.data() + 20, export_.data(), export_.size());
    put16(opt.data() + 20 + export_.size(), 0);  // no information requests
    if (!sendAll(fd_, cflags, 4) || !sendAll(fd_, opt.data(), opt.size())) return err = "handshake send failed", false;
    bool gotExport = false;
    for (;;) {
      uint8_t rh[20];
      if (!recvAll(fd_, rh, sizeof rh)) return err = "NBD server closed the connection during the handshake", false;
      uint32_t type = get32(rh + 12), len = get32(rh + 16);
      if (get64(rh) != kOptReplyMagic || get32(rh + 8) != kOptGo || len > kMaxOptReply) return err = "bad option reply", false;
      std::vector<uint8_t> data(len);
      if (len && !recvAll(fd_, data.data(), len)) return err = "short option reply", false;
      if (type & kRepErrBit) return err = "export '" + export_ + "' refused: " + std::string(data.begin(), data.end()), false;
      if (type == kRepInfo && len >= 12 && get16(data.data()) == kInfoExport) {
        size_ = get64(data.data() + 2);
        flags_ = get16(data.data() + 10);
        gotExport = true;
      } else if (type == kRepAck) {
        if (!gotExport) return err = "NBD server sent no export size", false;
        if ((flags_ & kTransReadOnly) && !readOnly_) return err = "export is read-only; attach it with readOnly", false;
        return true;
      }
    }
  }

  std::string socketPath_, host_;
  int port_;
  std::string export_;
  bool readOnly_;
  int fd_ = -1;
  uint64_t size_ = 0;
  uint16_t flags_ = 0;
  bool broken_ = false;
  uint64_t nextHandle_ = 1;
  std::unordered_map<uint64_t, BlkRequest*> inflight_;
};

}  // namespace

std::unique_ptr<Backend> nbdBackend(const std::string& socketPath, const std::string& host, int port,
                                    const std::string& exportName, bool readOnly) {
  return std::make_unique<NbdBackend>(socketPath, host, port, exportName, readOnly);
}

}  // namespace runner
