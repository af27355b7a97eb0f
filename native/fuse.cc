// A small FUSE server speaking the kernel protocol on /dev/fuse directly (no libfuse): a flat
// directory of fixed-size files whose bytes live in JS BlockDevices.
//
// Worker threads read requests from the fuse fd. Metadata (lookup, getattr, readdir, open, ...)
// is answered here from the file table; data requests (read, write, flush/fsync, fallocate) go
// to JS through a thread-safe function and the thread waits for JS to answer. Each thread owns
// one request buffer that JS also holds as a Buffer: a READ is read straight into the reply's
// data area and a WRITE's data is handed to JS where the kernel put it, so no data is copied
// between JS and here. N threads are N requests in flight.
#include "fuse.h"
#include <napi.h>
#include <linux/falloc.h>
#include <linux/fuse.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

using fuse_export::kMaxIo;
constexpr uint64_t kRootId = FUSE_ROOT_ID;  // files are node ids 2, 3, ...
constexpr uint32_t kPageSize = 4096;
// Kernel rule: the read buffer holds a WRITE header and max_write bytes (at least 8 KiB).
constexpr size_t kBufferSize = kMaxIo + 2 * kPageSize;
constexpr size_t kReadDataOffset = sizeof(fuse_out_header);
constexpr size_t kWriteDataOffset = sizeof(fuse_in_header) + sizeof(fuse_write_in);

// Requests JS answers (the op argument of the request callback).
enum JsOp { kRead = 1, kWrite = 2, kFlush = 3, kZero = 4, kPunch = 5 };

struct File {
  std::string name;
  uint64_t size;
  bool writable;
};

struct Session;

struct Slot {
  Session* session;
  uint32_t index;
  uint8_t* buf;  // owned by a JS Buffer the session references
  std::mutex m;
  std::condition_variable cv;
  bool answered = false;
  int32_t error = 0;
  uint32_t length = 0;
  // The request JS is working on.
  uint32_t op = 0, file = 0, size = 0;
  uint64_t offset = 0;
};

struct Session {
  int fd;
  uint32_t uid, gid;
  bool directIo;
  uint64_t mountTime;  // every time stamp shown
  std::vector<File> files;
  std::vector<std::unique_ptr<Slot>> slots;
  std::vector<std::thread> threads;
  std::vector<Napi::Reference<Napi::Buffer<uint8_t>>> buffers;
  Napi::ThreadSafeFunction tsfn;
  bool ended = false;  // the workers are gone; replies are ignored
};

void SendReply(int fd, uint64_t unique, int32_t error, const void* body, size_t len) {
  fuse_out_header h{};
  h.len = static_cast<uint32_t>(sizeof h + (error ? 0 : len));
  h.error = -error;
  h.unique = unique;
  iovec iov[2] = {{&h, sizeof h}, {const_cast<void*>(body), error ? 0 : len}};
  // ENOENT: the request was interrupted meanwhile; nothing to do.
  while (writev(fd, iov, body && !error ? 2 : 1) < 0 && errno == EINTR) {
  }
}

void FillAttr(const Session& s, uint64_t node, fuse_attr* a) {
  memset(a, 0, sizeof *a);
  a->ino = node;
  a->uid = s.uid;
  a->gid = s.gid;
  a->blksize = kPageSize;
  a->atime = a->mtime = a->ctime = s.mountTime;
  if (node == kRootId) {
    a->mode = S_IFDIR | 0755;
    a->nlink = 2;
    return;
  }
  const File& f = s.files[node - 2];
  a->mode = S_IFREG | (f.writable ? 0644 : 0444);
  a->nlink = 1;
  a->size = f.size;
  a->blocks = (f.size + 511) / 512;
}

const File* FileOf(const Session& s, uint64_t node) {
  if (node < 2 || node - 2 >= s.files.size()) return nullptr;
  return &s.files[node - 2];
}

void ReplyAttr(Session& s, uint64_t unique, uint64_t node) {
  fuse_attr_out out{};
  out.attr_valid = 1;
  FillAttr(s, node, &out.attr);
  SendReply(s.fd, unique, 0, &out, sizeof out);
}

void ReplyInit(Session& s, const fuse_in_header* in, const fuse_init_in* init) {
  fuse_init_out out{};
  out.major = FUSE_KERNEL_VERSION;
  out.minor = FUSE_KERNEL_MINOR_VERSION;
  if (init->major != FUSE_KERNEL_VERSION) {  // kernel retries with our major
    SendReply(s.fd, in->unique, init->major < FUSE_KERNEL_VERSION ? EPROTO : 0, &out, 8);
    return;
  }
  // ASYNC_DIO: a direct I/O larger than one request goes out as parallel requests.
  // ATOMIC_O_TRUNC: O_TRUNC comes with OPEN, where it is ignored as a block device ignores it.
  uint32_t want = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_PARALLEL_DIROPS | FUSE_ASYNC_DIO | FUSE_ATOMIC_O_TRUNC;
  out.flags = init->flags & want;
  out.max_readahead = std::min<uint32_t>(init->max_readahead, kMaxIo);
  out.max_background = 16;
  out.congestion_threshold = 12;
  out.max_write = (out.flags & FUSE_MAX_PAGES) ? kMaxIo : 128 * 1024;
  out.time_gran = 1;
  out.max_pages = kMaxIo / kPageSize;
  size_t len = init->minor < 23 ? FUSE_COMPAT_22_INIT_OUT_SIZE : sizeof out;
  SendReply(s.fd, in->unique, 0, &out, len);
}

void ReplyReaddir(Session& s, uint64_t unique, const fuse_read_in* r) {
  std::vector<uint8_t> out;
  size_t count = s.files.size() + 2;
  for (uint64_t i = r->offset; i < count; i++) {
    std::string name = i == 0 ? "." : i == 1 ? ".." : s.files[i - 2].name;
    size_t rec = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + name.size());
    if (out.size() + rec > r->size) break;
    size_t at = out.size();
    out.resize(at + rec, 0);
    fuse_dirent* d = reinterpret_cast<fuse_dirent*>(out.data() + at);
    d->ino = i < 2 ? kRootId : i;  // files: node id i (= index + 2)
    d->off = i + 1;
    d->namelen = static_cast<uint32_t>(name.size());
    d->type = i < 2 ? DT_DIR : DT_REG;
    memcpy(out.data() + at + FUSE_NAME_OFFSET, name.data(), name.size());
  }
  SendReply(s.fd, unique, 0, out.data(), out.size());
}

// Hands a data request to JS and waits for its answer; returns the error, sets *length.
int32_t AskJs(Slot& slot, uint32_t op, uint64_t node, uint64_t offset, uint32_t size, uint32_t* length) {
  {
    std::lock_guard<std::mutex> lock(slot.m);
    slot.answered = false;
    slot.op = op;
    slot.file = static_cast<uint32_t>(node - 2);
    slot.offset = offset;
    slot.size = size;
  }
  napi_status st = slot.session->tsfn.BlockingCall(&slot, [](Napi::Env env, Napi::Function fn, Slot* sl) {
    fn.Call({Napi::Number::New(env, sl->index), Napi::Number::New(env, sl->op), Napi::Number::New(env, sl->file),
             Napi::Number::New(env, static_cast<double>(sl->offset)), Napi::Number::New(env, sl->size)});
  });
  if (st != napi_ok) return EIO;
  std::unique_lock<std::mutex> lock(slot.m);
  slot.cv.wait(lock, [&] { return slot.answered; });
  *length = slot.length;
  return slot.error;
}

void Handle(Slot& slot, size_t n) {
  Session& s = *slot.session;
  auto* in = reinterpret_cast<fuse_in_header*>(slot.buf);
  void* arg = slot.buf + sizeof *in;
  if (n < sizeof *in || in->len != n) return;
  const File* file = FileOf(s, in->nodeid);
  uint32_t len = 0;
  switch (in->opcode) {
    case FUSE_INIT:
      ReplyInit(s, in, static_cast<fuse_init_in*>(arg));
      return;
    case FUSE_FORGET:
    case FUSE_BATCH_FORGET:
    case FUSE_INTERRUPT:  // requests are short; let them finish
      return;
    case FUSE_LOOKUP: {
      const char* name = static_cast<const char*>(arg);
      size_t max = n - sizeof *in;
      for (size_t i = 0; in->nodeid == kRootId && i < s.files.size(); i++) {
        const std::string& want = s.files[i].name;
        if (strnlen(name, max) == want.size() && memcmp(name, want.data(), want.size()) == 0) {
          fuse_entry_out e{};
          e.nodeid = i + 2;
          e.entry_valid = 1;
          e.attr_valid = 1;
          FillAttr(s, e.nodeid, &e.attr);
          SendReply(s.fd, in->unique, 0, &e, sizeof e);
          return;
        }
      }
      SendReply(s.fd, in->unique, ENOENT, nullptr, 0);
      return;
    }
    case FUSE_GETATTR:
      if (!file && in->nodeid != kRootId) break;
      ReplyAttr(s, in->unique, in->nodeid);
      return;
    case FUSE_SETATTR: {
      auto* a = static_cast<fuse_setattr_in*>(arg);
      if (!file && in->nodeid != kRootId) break;
      // The files are disks: their size is fixed. Times, modes and owners are not kept.
      if ((a->valid & FATTR_SIZE) && (!file || a->size != file->size)) {
        SendReply(s.fd, in->unique, file && !file->writable ? EROFS : EINVAL, nullptr, 0);
        return;
      }
      ReplyAttr(s, in->unique, in->nodeid);
      return;
    }
    case FUSE_OPEN: {
      auto* o = static_cast<fuse_open_in*>(arg);
      if (!file) break;
      if ((o->flags & O_ACCMODE) != O_RDONLY && !file->writable) {
        SendReply(s.fd, in->unique, EROFS, nullptr, 0);
        return;
      }
      fuse_open_out out{};
      out.open_flags = s.directIo ? FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES : FOPEN_KEEP_CACHE;
      SendReply(s.fd, in->unique, 0, &out, sizeof out);
      return;
    }
    case FUSE_OPENDIR: {
      if (in->nodeid != kRootId) break;
      fuse_open_out out{};
      SendReply(s.fd, in->unique, 0, &out, sizeof out);
      return;
    }
    case FUSE_READDIR:
      if (in->nodeid != kRootId) break;
      ReplyReaddir(s, in->unique, static_cast<fuse_read_in*>(arg));
      return;
    case FUSE_RELEASE:
    case FUSE_RELEASEDIR:
    case FUSE_ACCESS:
    case FUSE_DESTROY:
      SendReply(s.fd, in->unique, 0, nullptr, 0);
      return;
    case FUSE_STATFS: {
      fuse_statfs_out out{};
      out.st.bsize = kPageSize;
      out.st.frsize = kPageSize;
      out.st.namelen = 255;
      out.st.files = s.files.size() + 1;
      SendReply(s.fd, in->unique, 0, &out, sizeof out);
      return;
    }
    case FUSE_READ: {
      auto* r = static_cast<fuse_read_in*>(arg);
      if (!file) break;
      uint64_t end = std::min<uint64_t>(file->size, r->offset + std::min<uint32_t>(r->size, kMaxIo));
      uint32_t size = r->offset < end ? static_cast<uint32_t>(end - r->offset) : 0;
      int32_t err = size ? AskJs(slot, kRead, in->nodeid, r->offset, size, &len) : 0;
      // The data is in the buffer after the room for the reply header.
      auto* h = reinterpret_cast<fuse_out_header*>(slot.buf);
      uint64_t unique = in->unique;
      h->len = static_cast<uint32_t>(sizeof *h + (err ? 0 : len));
      h->error = -err;
      h->unique = unique;
      while (write(s.fd, slot.buf, h->len) < 0 && errno == EINTR) {
      }
      return;
    }
    case FUSE_WRITE: {
      auto* w = static_cast<fuse_write_in*>(arg);
      if (!file) break;
      if (!file->writable) {
        SendReply(s.fd, in->unique, EROFS, nullptr, 0);
        return;
      }
      if (n < kWriteDataOffset + w->size || w->offset >= file->size) {
        SendReply(s.fd, in->unique, w->offset >= file->size ? ENOSPC : EINVAL, nullptr, 0);
        return;
      }
      uint32_t size = static_cast<uint32_t>(std::min<uint64_t>(w->size, file->size - w->offset));
      uint64_t unique = in->unique;
      int32_t err = AskJs(slot, kWrite, in->nodeid, w->offset, size, &len);
      fuse_write_out out{};
      out.size = len;
      SendReply(s.fd, unique, err, &out, sizeof out);
      return;
    }
    case FUSE_FLUSH:
    case FUSE_FSYNC: {
      if (!file) break;
      uint64_t unique = in->unique;
      int32_t err = file->writable ? AskJs(slot, kFlush, in->nodeid, 0, 0, &len) : 0;
      SendReply(s.fd, unique, err, nullptr, 0);
      return;
    }
    case FUSE_FALLOCATE: {
      auto* f = static_cast<fuse_fallocate_in*>(arg);
      if (!file) break;
      uint64_t unique = in->unique;
      int32_t err = 0;
      // Past the end of a disk there is nothing to allocate or zero.
      uint64_t length = f->offset < file->size ? std::min<uint64_t>(f->length, file->size - f->offset) : 0;
      if (!file->writable) {
        err = EROFS;
      } else if (length < f->length && !(f->mode & FALLOC_FL_KEEP_SIZE)) {
        err = EFBIG;
      } else if (length == 0 || length > UINT32_MAX) {
        err = length ? EOPNOTSUPP : 0;
      } else if (f->mode == 0 || f->mode == FALLOC_FL_KEEP_SIZE) {
        err = 0;  // a disk is all there already
      } else if (f->mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
        err = AskJs(slot, kPunch, in->nodeid, f->offset, static_cast<uint32_t>(length), &len);
      } else if (f->mode == FALLOC_FL_ZERO_RANGE || f->mode == (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)) {
        err = AskJs(slot, kZero, in->nodeid, f->offset, static_cast<uint32_t>(length), &len);
      } else {
        err = EOPNOTSUPP;
      }
      SendReply(s.fd, unique, err, nullptr, 0);
      return;
    }
    case FUSE_CREATE:
    case FUSE_MKNOD:
    case FUSE_MKDIR:
    case FUSE_SYMLINK:
    case FUSE_LINK:
    case FUSE_UNLINK:
    case FUSE_RMDIR:
    case FUSE_RENAME:
    case FUSE_RENAME2:
      SendReply(s.fd, in->unique, EPERM, nullptr, 0);  // the set of files is fixed
      return;
    default:
      SendReply(s.fd, in->unique, ENOSYS, nullptr, 0);
      return;
  }
  SendReply(s.fd, in->unique, ENOENT, nullptr, 0);
}

void Serve(Slot* slot) {
  Session& s = *slot->session;
  for (;;) {
    ssize_t n = read(s.fd, slot->buf, kBufferSize);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue;
      break;  // ENODEV: unmounted; anything else: the connection is unusable
    }
    Handle(*slot, static_cast<size_t>(n));
  }
  s.tsfn.Release();
}

class FuseSession : public Napi::ObjectWrap<FuseSession> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FuseSession", {InstanceMethod("reply", &FuseSession::Reply)});
  }

  // new FuseSession(fd, files [{name, size, writable}], buffers, directIo, onRequest, onEnd)
  explicit FuseSession(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FuseSession>(info), s_(std::make_shared<Session>()) {
    Napi::Env env = info.Env();
    s_->fd = info[0].As<Napi::Number>().Int32Value();
    s_->uid = geteuid();
    s_->gid = getegid();
    s_->mountTime = static_cast<uint64_t>(time(nullptr));
    Napi::Array files = info[1].As<Napi::Array>();
    for (uint32_t i = 0; i < files.Length(); i++) {
      Napi::Object f = files.Get(i).As<Napi::Object>();
      s_->files.push_back({f.Get("name").As<Napi::String>(), static_cast<uint64_t>(f.Get("size").As<Napi::Number>().Int64Value()),
                           f.Get("writable").ToBoolean()});
    }
    Napi::Array buffers = info[2].As<Napi::Array>();
    s_->directIo = info[3].ToBoolean();
    for (uint32_t i = 0; i < buffers.Length(); i++) {
      auto b = buffers.Get(i).As<Napi::Buffer<uint8_t>>();
      if (b.Length() < kBufferSize) {
        Napi::RangeError::New(env, "fuse buffer too small").ThrowAsJavaScriptException();
        return;
      }
      s_->buffers.push_back(Napi::Persistent(b));
      auto slot = std::make_unique<Slot>();
      slot->session = s_.get();
      slot->index = i;
      slot->buf = b.Data();
      s_->slots.push_back(std::move(slot));
    }
    Napi::Function onEnd = info[5].As<Napi::Function>();
    auto* endRef = new Napi::FunctionReference(Napi::Persistent(onEnd));
    Session* s = s_.get();
    // Finalized on the JS thread once every worker has released it: the connection is gone.
    s_->tsfn = Napi::ThreadSafeFunction::New(env, info[4].As<Napi::Function>(), "img-fuse", 0, s_->slots.size(), s,
                                             // Holds the session until the workers are gone, whatever JS keeps.
                                             [endRef, keep = s_](Napi::Env, Session* ss) {
                                               for (auto& t : ss->threads) t.join();
                                               close(ss->fd);
                                               for (auto& b : ss->buffers) b.Reset();
                                               ss->ended = true;
                                               endRef->Call({});
                                               delete endRef;
                                             });
    for (auto& slot : s_->slots) s_->threads.emplace_back(Serve, slot.get());
  }

 private:
  // reply(slot, errno, length): JS's answer to the slot's request.
  Napi::Value Reply(const Napi::CallbackInfo& info) {
    uint32_t i = info[0].As<Napi::Number>().Uint32Value();
    if (s_->ended || i >= s_->slots.size()) return info.Env().Undefined();
    Slot& slot = *s_->slots.at(i);
    std::lock_guard<std::mutex> lock(slot.m);
    slot.error = info[1].As<Napi::Number>().Int32Value();
    slot.length = info[2].As<Napi::Number>().Uint32Value();
    slot.answered = true;
    slot.cv.notify_one();
    return info.Env().Undefined();
  }

  // Shared so a late reply after the end finds the session still there.
  std::shared_ptr<Session> s_;
};

}  // namespace

Napi::Object InitFuse(Napi::Env env, Napi::Object exports) {
  InitFuseMount(env, exports);
  exports.Set("FuseSession", FuseSession::Define(env));
  exports.Set("FUSE_BUFFER_SIZE", Napi::Number::New(env, kBufferSize));
  exports.Set("FUSE_READ_DATA_OFFSET", Napi::Number::New(env, kReadDataOffset));
  exports.Set("FUSE_WRITE_DATA_OFFSET", Napi::Number::New(env, kWriteDataOffset));
  return exports;
}
