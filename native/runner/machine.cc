#include "machine.h"
#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>
#include "boot.h"
#include "virtio_blk_defs.h"

namespace runner {

namespace {

constexpr uint64_t kMinMemory = 16ull << 20, kMaxMemory = 256ull << 30;
constexpr size_t kMaxDisks = 6;
constexpr uint8_t kDiskIrqs[kMaxDisks] = {10, 11, 9, 5, 14, 15};  // free ISA lines on the PIC
constexpr uint16_t kDiskIoBase = 0xc000;
constexpr size_t kConsoleMax = 4 << 20;  // bytes kept when JS does not keep up
constexpr uint64_t kStopTag = ~0ull;

void kickHandler(int) {}

// The real-time signal that knocks the vCPU thread out of KVM_RUN (never SIGUSR1: Node's).
int kickSignal() {
  static int sig = [] {
    int s = SIGRTMIN + 6;
    struct sigaction sa {};
    sa.sa_handler = kickHandler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
    sigaction(s, &sa, nullptr);
    return s;
  }();
  return sig;
}

bool readFile(const std::string& path, std::vector<uint8_t>& out, std::string& err) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size >= (1ll << 32)) {
    err = path + ": cannot read initrd" + (fd < 0 ? std::string(": ") + strerror(errno) : "");
    if (fd >= 0) close(fd);
    return false;
  }
  out.resize(st.st_size);
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = read(fd, out.data() + done, out.size() - done);
    if (n <= 0) break;
    done += n;
  }
  close(fd);
  if (done != out.size()) return err = path + ": short read of initrd", false;
  return true;
}

}  // namespace

Machine::Machine(VmSpec spec, std::function<void()> consoleReady, std::function<void(const ExitInfo&)> onExit)
    : spec_(std::move(spec)), consoleReady_(std::move(consoleReady)), onExit_(std::move(onExit)),
      uart_([this](int level) { kvm_.setIrq(kUartIrq, level); },
            [this](uint8_t b) {
              bool post = false;
              {
                std::lock_guard<std::mutex> g(consoleMu_);
                if (console_.size() < kConsoleMax) console_.push_back(static_cast<char>(b));
                post = !consolePosted_;
                consolePosted_ = true;
              }
              if (post) consoleReady_();
            }) {}

Machine::~Machine() {
  if (vcpu_.joinable()) {
    requestExit("stopped", 2, "");
    vcpu_.join();
  }
  disks_.clear();
  if (stopFd_ >= 0) close(stopFd_);
}

PrepareError Machine::prepare(std::string& err) {
  if (spec_.memBytes < kMinMemory || spec_.memBytes > kMaxMemory)
    return err = "memory must be between 16 MiB and 256 GiB", PrepareError::NoMemory;
  if (spec_.disks.size() > kMaxDisks) return err = "at most 6 disks", PrepareError::BadConfig;
  KernelImage kernel;
  if (!readKernel(spec_.kernel, kernel, err)) return PrepareError::BadKernel;
  std::vector<uint8_t> initrd;
  if (!spec_.initrd.empty() && !readFile(spec_.initrd, initrd, err)) return PrepareError::BadConfig;
  if (spec_.cmdline.size() > kernel.cmdlineSize)
    return err = "command line is longer than the kernel's " + std::to_string(kernel.cmdlineSize) + " bytes", PrepareError::BadConfig;
  uint64_t need = minimumMemory(kernel, initrd.size());
  if (spec_.memBytes < need || std::min(spec_.memBytes, kPciHoleStart) < need)
    return err = "too little memory: this kernel" + std::string(initrd.empty() ? " needs" : " and initrd need") + " at least " +
                 std::to_string((need + (1 << 20) - 1) >> 20) + " MiB",
           PrepareError::NoMemory;
  if (!kvm_.open(err) || !kvm_.createVm(spec_.memBytes, err)) return PrepareError::NoKvm;
  BootState boot;
  if (!loadBoot(kvm_.mem, kernel, initrd, spec_.cmdline, boot, err)) return PrepareError::NoMemory;
  if (!kvm_.createVcpu(boot, spec_.maskXsave, err)) return PrepareError::NoKvm;
  stopFd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (stopFd_ < 0) return err = "eventfd failed", PrepareError::NoKvm;
  for (size_t i = 0; i < spec_.disks.size(); i++) {
    const DiskSpec& d = spec_.disks[i];
    auto backend = d.nbd ? nbdBackend(d.socket, d.host, d.port, d.exportName, d.readOnly) : fileBackend(d.path, d.readOnly);
    auto dev = std::make_unique<VirtioBlk>(kvm_, std::move(backend), d.readOnly, "img-disk-" + std::to_string(i),
                                           kDiskIoBase + i * kVpBarSize, kDiskIrqs[i],
                                           [this](const std::string& m) { requestExit("error", 1, m); });
    if (!dev->open(err)) return PrepareError::NoKvm;
    pci_.add(dev.get());
    disks_.push_back(std::move(dev));
  }
  kickSignal();
  return PrepareError::None;
}

void Machine::start() {
  vcpu_ = std::thread([this] { vcpuMain(); });
  vcpuHandle_ = vcpu_.native_handle();
  vcpuStarted_ = true;
}

void Machine::requestExit(const std::string& reason, int code, const std::string& message) {
  {
    std::lock_guard<std::mutex> g(exitMu_);
    if (exitSet_) return;
    exitSet_ = true;
    exit_ = {reason, code, message};
  }
  stopping_ = true;
  kick();
}

void Machine::kick() {
  if (kvm_.run) __atomic_store_n(&kvm_.run->immediate_exit, 1, __ATOMIC_SEQ_CST);
  if (vcpuStarted_) pthread_kill(vcpuHandle_, kickSignal());
  uint64_t one = 1;
  if (write(stopFd_, &one, 8) < 0) {}
  for (auto& d : disks_) d->backend().interrupt();
}

std::string Machine::takeConsole() {
  std::lock_guard<std::mutex> g(consoleMu_);
  consolePosted_ = false;
  return std::move(console_);
}

void Machine::join() {
  if (vcpu_.joinable()) vcpu_.join();
}

void Machine::vcpuMain() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, kickSignal());
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  for (auto& d : disks_) {
    std::string err;
    if (stopping_) break;
    if (!d->backend().open(err)) requestExit("error", 1, err);
  }
  if (!stopping_) {
    io_ = std::thread([this] { ioMain(); });
    runLoop();
  }
  requestExit("error", 1, "vCPU loop ended");  // no-op when a reason was given
  uint64_t one = 1;
  if (write(stopFd_, &one, 8) < 0) {}
  if (io_.joinable()) io_.join();
  ExitInfo e;
  {
    std::lock_guard<std::mutex> g(exitMu_);
    e = exit_;
  }
  onExit_(e);
}

void Machine::runLoop() {
  kvm_run* run = kvm_.run;
  while (!stopping_) {
    if (ioctl(kvm_.vcpuFd, KVM_RUN, 0) < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return requestExit("error", 1, std::string("KVM_RUN: ") + strerror(errno));
    }
    switch (run->exit_reason) {
      case KVM_EXIT_IO:
        handlePio();
        break;
      case KVM_EXIT_MMIO:  // nothing is memory-mapped: reads see all ones, writes vanish
        if (!run->mmio.is_write) memset(run->mmio.data, 0xff, sizeof run->mmio.data);
        break;
      case KVM_EXIT_INTR:
        break;
      case KVM_EXIT_SHUTDOWN:  // triple fault: how `reboot=t` ends the guest
        return requestExit("shutdown", 0, "");
      case KVM_EXIT_SYSTEM_EVENT:
        return requestExit("shutdown", 0, "");
      case KVM_EXIT_HLT:
        return requestExit("error", 1, "the vCPU halted with interrupts off");
      case KVM_EXIT_FAIL_ENTRY:
        return requestExit("error", 1, "KVM entry failed, hardware reason " +
                                           std::to_string(run->fail_entry.hardware_entry_failure_reason));
      case KVM_EXIT_INTERNAL_ERROR:
      {
        std::string m = "KVM internal error " + std::to_string(run->internal.suberror);
        for (uint32_t i = 0; i < run->internal.ndata && i < 4; i++) m += " " + std::to_string(run->internal.data[i]);
        return requestExit("error", 1, m);
      }
      default:
        return requestExit("error", 1, "unexpected KVM exit " + std::to_string(run->exit_reason));
    }
  }
}

void Machine::handlePio() {
  kvm_run* run = kvm_.run;
  bool write = run->io.direction == KVM_EXIT_IO_OUT;
  int size = run->io.size;
  uint16_t port = run->io.port;
  uint8_t* data = reinterpret_cast<uint8_t*>(run) + run->io.data_offset;
  for (uint32_t i = 0; i < run->io.count; i++, data += size) {
    if (port >= kUartBase && port < kUartBase + 8) {
      if (write) uart_.write(port - kUartBase, data[0]);
      else data[0] = uart_.read(port - kUartBase);
      continue;
    }
    if (port == 0x70 || port == 0x71) {
      if (write) cmos_.write(port, data[0]);
      else data[0] = cmos_.read(port);
      continue;
    }
    if (pci_.pio(port, write, data, size)) continue;
    bool claimed = false;
    for (auto& d : disks_)
      if ((claimed = d->pio(port, write, data, size))) break;
    if (!claimed && !write) memset(data, 0xff, size);  // nothing there: the bus floats high
  }
}

void Machine::ioMain() {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) return requestExit("error", 1, "epoll_create1 failed");
  auto watch = [&](int fd, uint64_t tag) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  };
  watch(stopFd_, kStopTag);
  for (size_t i = 0; i < disks_.size(); i++) {
    watch(disks_[i]->notifyFd(), 2 * i);
    if (disks_[i]->backend().pollFd() >= 0) watch(disks_[i]->backend().pollFd(), 2 * i + 1);
  }
  epoll_event evs[16];
  while (!stopping_) {
    int n = epoll_wait(ep, evs, 16, -1);
    if (n < 0 && errno != EINTR) break;
    for (int k = 0; k < n && !stopping_; k++) {
      uint64_t tag = evs[k].data.u64;
      if (tag == kStopTag) break;
      VirtioBlk& d = *disks_[tag / 2];
      if (tag % 2) d.onBackendReadable();
      else d.onNotify();
    }
  }
  close(ep);
}

}  // namespace runner
