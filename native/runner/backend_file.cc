// A host file as a disk: preadv/pwritev/fdatasync on the I/O thread.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>
#include <climits>
#include <cstring>
#include "backend.h"
#include "virtio_blk_defs.h"

namespace runner {

namespace {

class FileBackend : public Backend {
 public:
  FileBackend(std::string path, bool readOnly) : path_(std::move(path)), readOnly_(readOnly) {}
  ~FileBackend() override {
    if (fd_ >= 0) close(fd_);
  }
  bool open(std::string& err) override {
    fd_ = ::open(path_.c_str(), (readOnly_ ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (fd_ < 0) return err = path_ + ": cannot open disk: " + strerror(errno), false;
    struct stat st;
    if (fstat(fd_, &st) < 0) return err = path_ + ": " + strerror(errno), false;
    size_ = st.st_size;
    return true;
  }
  uint64_t size() const override { return size_; }
  void submit(BlkRequest* r) override { complete(r, run(r)); }

 private:
  uint8_t run(BlkRequest* r) {
    if (r->op == BlkOp::Flush) return fdatasync(fd_) == 0 ? kBlkStatusOk : kBlkStatusIoErr;
    size_t i = 0;
    off_t off = r->offset;
    std::vector<iovec> iov = r->iov;  // advanced in place on short transfers
    while (i < iov.size()) {
      int cnt = static_cast<int>(std::min<size_t>(iov.size() - i, IOV_MAX));
      ssize_t n = r->op == BlkOp::Read ? preadv(fd_, &iov[i], cnt, off) : pwritev(fd_, &iov[i], cnt, off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        // Reading past the end of a file that shrank: the rest reads as zeroes.
        if (n == 0 && r->op == BlkOp::Read) {
          for (; i < iov.size(); i++) memset(iov[i].iov_base, 0, iov[i].iov_len);
          break;
        }
        return kBlkStatusIoErr;
      }
      off += n;
      while (n > 0 && i < iov.size()) {
        size_t step = std::min<size_t>(n, iov[i].iov_len);
        iov[i].iov_base = static_cast<uint8_t*>(iov[i].iov_base) + step;
        iov[i].iov_len -= step;
        n -= step;
        if (iov[i].iov_len == 0) i++;
      }
    }
    return kBlkStatusOk;
  }

  std::string path_;
  bool readOnly_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

}  // namespace

std::unique_ptr<Backend> fileBackend(const std::string& path, bool readOnly) {
  return std::make_unique<FileBackend>(path, readOnly);
}

}  // namespace runner
