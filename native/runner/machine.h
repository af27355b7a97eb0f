// One VM: KVM, RAM with the kernel loaded, the UART, PCI and virtio-blk devices, a vCPU
// thread running KVM_RUN and an I/O thread (epoll on the queue eventfds and the backends'
// sockets). Ends on a triple fault, an error, or requestExit(); the vCPU thread joins the
// I/O thread and then reports the exit, last.
#pragma once
#include <pthread.h>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
#include "cmos.h"
#include "kvm.h"
#include "pci.h"
#include "uart.h"
#include "virtio_blk.h"

namespace runner {

struct DiskSpec {
  bool nbd = false, readOnly = false;
  std::string path, socket, host, exportName;
  int port = 0;
};

struct VmSpec {
  std::string kernel, initrd, cmdline;
  uint64_t memBytes = 0;
  std::vector<DiskSpec> disks;
  bool maskXsave = false;
};

struct ExitInfo {
  std::string reason;  // shutdown | timeout | stopped | error
  int code = 0;
  std::string message;
};

// What went wrong before the guest could start, for a precise error code.
enum class PrepareError { None, NoKvm, BadKernel, NoMemory, BadConfig };

class Machine {
 public:
  // consoleReady: serial bytes are waiting in takeConsole(); onExit: the VM is over (called once).
  Machine(VmSpec spec, std::function<void()> consoleReady, std::function<void(const ExitInfo&)> onExit);
  ~Machine();
  // Synchronous setup on the caller's thread: kernel checks, KVM, RAM, boot state, devices.
  PrepareError prepare(std::string& err);
  void start();
  // Ends the VM with this outcome unless it has already ended (first reason wins).
  void requestExit(const std::string& reason, int code, const std::string& message);
  void sendConsole(const uint8_t* data, size_t n) { uart_.receive(data, n); }
  std::string takeConsole();
  // Joins the vCPU thread (after onExit was called).
  void join();

 private:
  void vcpuMain();
  void ioMain();
  void runLoop();
  void handlePio();
  void kick();

  VmSpec spec_;
  std::function<void()> consoleReady_;
  std::function<void(const ExitInfo&)> onExit_;
  Kvm kvm_;
  Uart uart_;
  Cmos cmos_;
  PciBus pci_;
  std::vector<std::unique_ptr<VirtioBlk>> disks_;
  int stopFd_ = -1;

  std::thread vcpu_, io_;
  std::atomic<bool> vcpuStarted_{false};
  pthread_t vcpuHandle_{};
  std::atomic<bool> stopping_{false};
  std::mutex exitMu_;
  bool exitSet_ = false;
  ExitInfo exit_;

  std::mutex consoleMu_;
  std::string console_;
  bool consolePosted_ = false;
};

}  // namespace runner
