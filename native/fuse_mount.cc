// Mounting and unmounting the FUSE filesystem of fuse.cc: mount(2) with an fd of /dev/fuse
// as root, fusermount3's fd passing (_FUSE_COMMFD) otherwise.
#include "fuse.h"
#include <fcntl.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

extern char** environ;

namespace {

using fuse_export::kMaxIo;

Napi::Value ThrowErrno(Napi::Env env, const std::string& what, int err) {
  Napi::Error e = Napi::Error::New(env, what + ": " + strerror(err));
  e.Set("errno", Napi::Number::New(env, err));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

// Gets a mounted fuse fd from fusermount3 through a unix socket (_FUSE_COMMFD), as non-root.
int MountWithFusermount(const std::string& dir, const std::string& opts, std::string* why) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) return -1;
  fcntl(sv[0], F_SETFD, FD_CLOEXEC);
  std::string env = "_FUSE_COMMFD=" + std::to_string(sv[1]);
  std::vector<char*> envp;
  for (char** e = environ; *e; e++) envp.push_back(*e);
  envp.push_back(const_cast<char*>(env.c_str()));
  envp.push_back(nullptr);
  const char* argv[] = {"fusermount3", "-o", opts.c_str(), "--", dir.c_str(), nullptr};
  pid_t pid;
  int r = posix_spawnp(&pid, "fusermount3", nullptr, nullptr, const_cast<char**>(argv), envp.data());
  close(sv[1]);
  if (r != 0) {
    close(sv[0]);
    *why = "cannot run fusermount3 (install fuse3)";
    return -1;
  }
  char byte;
  char control[CMSG_SPACE(sizeof(int))];
  iovec iov = {&byte, 1};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t got;
  while ((got = recvmsg(sv[0], &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {
  }
  close(sv[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  cmsghdr* c = got > 0 ? CMSG_FIRSTHDR(&msg) : nullptr;
  if (!c || c->cmsg_type != SCM_RIGHTS) {
    *why = "fusermount3 failed";
    return -1;
  }
  int fd;
  memcpy(&fd, CMSG_DATA(c), sizeof fd);
  return fd;
}

// fuseMount(dir, readOnly): mounts an empty FUSE filesystem at dir; returns the fuse fd.
Napi::Value Mount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string dir = info[0].As<Napi::String>();
  bool readOnly = info[1].ToBoolean();
  std::string common = "max_read=" + std::to_string(kMaxIo) + ",default_permissions";
  if (geteuid() != 0) {
    std::string why;
    int fd = MountWithFusermount(dir, std::string(readOnly ? "ro" : "rw") + ",nosuid,nodev,fsname=img,subtype=img," + common, &why);
    if (fd < 0) return ThrowErrno(env, why, errno ? errno : EPERM);
    return Napi::Number::New(env, fd);
  }
  int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fd < 0) return ThrowErrno(env, "/dev/fuse", errno);
  std::string opts = "fd=" + std::to_string(fd) + ",rootmode=40755,user_id=0,group_id=0,allow_other," + common;
  unsigned long flags = MS_NOSUID | MS_NODEV | (readOnly ? MS_RDONLY : 0);
  if (mount("img", dir.c_str(), "fuse.img", flags, opts.c_str()) < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, "mount " + dir, err);
  }
  return Napi::Number::New(env, fd);
}

// umount(dir, detach): umount2 for root.
Napi::Value Umount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string dir = info[0].As<Napi::String>();
  int flags = info[1].ToBoolean() ? MNT_DETACH : 0;
  if (umount2(dir.c_str(), flags) < 0) return ThrowErrno(env, "umount " + dir, errno);
  return env.Undefined();
}

}  // namespace

void InitFuseMount(Napi::Env env, Napi::Object exports) {
  exports.Set("fuseMount", Napi::Function::New(env, Mount));
  exports.Set("umount", Napi::Function::New(env, Umount));
}
