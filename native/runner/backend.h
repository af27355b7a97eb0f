// Disk backends behind a virtio-blk device. They run on the I/O thread only: submit()
// either completes a request at once (file) or later from onReadable() (NBD, pipelined).
#pragma once
#include <sys/uio.h>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace runner {

enum class BlkOp { Read, Write, Flush };

struct BlkRequest {
  BlkOp op = BlkOp::Read;
  uint64_t offset = 0, length = 0;  // bytes
  std::vector<iovec> iov;           // guest buffers, already bounds-checked
  uint16_t head = 0;                // descriptor chain head, for the used ring
  uint32_t usedLen = 0;             // bytes written into guest buffers, status byte included
  uint8_t* status = nullptr;
  uint32_t generation = 0;          // device reset count when submitted
  int settled = -1;                 // a status the device decided itself, or -1: for the backend
};

class Backend {
 public:
  virtual ~Backend() = default;
  // Opens the file or connects and negotiates; may block (runs before the guest starts).
  virtual bool open(std::string& err) = 0;
  virtual uint64_t size() const = 0;
  virtual void submit(BlkRequest* r) = 0;
  // For pipelined backends: a descriptor the I/O thread polls, and what to do when readable.
  virtual int pollFd() const { return -1; }
  // False (with err) when the connection is unusable.
  virtual bool onReadable(std::string& err) { return true; }
  // Unblocks any blocking call from another thread (stop).
  virtual void interrupt() {}
  // Called with a finished request and its virtio-blk status.
  std::function<void(BlkRequest*, uint8_t)> complete;
};

std::unique_ptr<Backend> fileBackend(const std::string& path, bool readOnly);
std::unique_ptr<Backend> nbdBackend(const std::string& socketPath, const std::string& host, int port,
                                    const std::string& exportName, bool readOnly);

}  // namespace runner
