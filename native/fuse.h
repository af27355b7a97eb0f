// Shared between the FUSE session (fuse.cc) and mounting (fuse_mount.cc).
#pragma once
#include <napi.h>
#include <cstdint>

namespace fuse_export {
constexpr uint32_t kMaxIo = 1 << 20;  // max_read and max_write
}  // namespace fuse_export

// fuseMount(dir, readOnly) and umount(dir, detach) on `exports`.
void InitFuseMount(Napi::Env env, Napi::Object exports);
