// Small Linux syscalls Node does not expose: fallocate (preallocation, punching holes),
// lseek with SEEK_DATA/SEEK_HOLE (allocation status of sparse host files), and positional
// reads with RWF_NOWAIT (done only when the page cache holds the data).
// All calls are synchronous: they touch only file metadata or the page cache and return quickly.
#include <napi.h>
#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>
#include <linux/falloc.h>
#include "runner/napi_vm.h"

Napi::Object InitFuse(Napi::Env env, Napi::Object exports);  // fuse.cc
Napi::Object InitSpliceWriter(Napi::Env env, Napi::Object exports);  // splice_writer.cc

namespace {

Napi::Value ThrowErrno(Napi::Env env, const char* what, int err) {
  Napi::Error e = Napi::Error::New(env, std::string(what) + ": " + strerror(err));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("code", Napi::String::New(env, err == EOPNOTSUPP ? "EOPNOTSUPP" : err == ENOSPC ? "ENOSPC" : "EIO"));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

int64_t ArgInt(const Napi::CallbackInfo& info, size_t i) {
  return info[i].As<Napi::Number>().Int64Value();
}

// fallocate(fd, mode, offset, length): mode is a combination of FALLOC_FL_* exported below.
Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4) {
    Napi::TypeError::New(env, "fallocate(fd, mode, offset, length)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = static_cast<int>(ArgInt(info, 0));
  int mode = static_cast<int>(ArgInt(info, 1));
  off_t offset = ArgInt(info, 2), length = ArgInt(info, 3);
  int r;
  do { r = fallocate(fd, mode, offset, length); } while (r < 0 && errno == EINTR);
  if (r < 0) return ThrowErrno(env, "fallocate", errno);
  return env.Undefined();
}

// seek(fd, offset, whence): SEEK_DATA / SEEK_HOLE; returns -1 for ENXIO (no more data past offset).
Napi::Value Seek(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(ArgInt(info, 0));
  off_t offset = ArgInt(info, 1);
  int whence = static_cast<int>(ArgInt(info, 2));
  off_t r = lseek(fd, offset, whence);
  if (r < 0) {
    if (errno == ENXIO) return Napi::Number::New(env, -1);
    return ThrowErrno(env, "lseek", errno);
  }
  return Napi::Number::New(env, static_cast<double>(r));
}

// preadNoWait(fd, buffer, position): preadv2 with RWF_NOWAIT, so the call never waits for
// the disk. Returns the bytes read (possibly fewer than asked, 0 at end of file), or -1 when
// the kernel would have had to wait (EAGAIN) or does not support the flag for this file
// (EOPNOTSUPP, EINVAL): then the caller reads the asynchronous way.
Napi::Value PreadNoWait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(ArgInt(info, 0));
  Napi::Uint8Array buf = info[1].As<Napi::Uint8Array>();
  off_t pos = ArgInt(info, 2);
  struct iovec iov = {buf.Data(), buf.ByteLength()};
  ssize_t r;
  do { r = preadv2(fd, &iov, 1, pos, RWF_NOWAIT); } while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno == EAGAIN || errno == EOPNOTSUPP || errno == EINVAL) return Napi::Number::New(env, -1);
    return ThrowErrno(env, "preadv2", errno);
  }
  return Napi::Number::New(env, static_cast<double>(r));
}

// dup(fd): a new descriptor (close-on-exec) for the same open file.
Napi::Value Dup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int r = fcntl(static_cast<int>(ArgInt(info, 0)), F_DUPFD_CLOEXEC, 0);
  if (r < 0) return ThrowErrno(env, "dup", errno);
  return Napi::Number::New(env, r);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("dup", Napi::Function::New(env, Dup));
  exports.Set("fallocate", Napi::Function::New(env, Fallocate));
  exports.Set("seek", Napi::Function::New(env, Seek));
  exports.Set("preadNoWait", Napi::Function::New(env, PreadNoWait));
  exports.Set("SEEK_DATA", Napi::Number::New(env, SEEK_DATA));
  exports.Set("SEEK_HOLE", Napi::Number::New(env, SEEK_HOLE));
  exports.Set("FALLOC_FL_KEEP_SIZE", Napi::Number::New(env, FALLOC_FL_KEEP_SIZE));
  exports.Set("FALLOC_FL_PUNCH_HOLE", Napi::Number::New(env, FALLOC_FL_PUNCH_HOLE));
  exports.Set("FALLOC_FL_ZERO_RANGE", Napi::Number::New(env, FALLOC_FL_ZERO_RANGE));
  runner::registerRunner(env, exports);
  InitSpliceWriter(env, exports);
  return InitFuse(env, exports);
}

}  // namespace

NODE_API_MODULE(img_native, Init)
