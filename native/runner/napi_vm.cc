// N-API glue: `new RunnerVm(config, callback)` prepares and starts a Machine; the callback
// gets ('console', Buffer) batches and finally ('exit', reason, code, message) once the
// threads are joined. Methods: stop(reason), sendConsole(buffer). Plus kvmUsable().
#include <napi.h>
#include <memory>
#include "machine.h"
#include "napi_vm.h"

namespace runner {

namespace {

struct Message {
  bool exit = false;
  ExitInfo info;
};

class RunnerVm : public Napi::ObjectWrap<RunnerVm> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "RunnerVm",
                       {InstanceMethod("stop", &RunnerVm::Stop), InstanceMethod("sendConsole", &RunnerVm::SendConsole)});
  }

  RunnerVm(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RunnerVm>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction()) {
      Napi::TypeError::New(env, "RunnerVm(config, callback)").ThrowAsJavaScriptException();
      return;
    }
    VmSpec spec;
    if (!parseSpec(info[0].As<Napi::Object>(), spec)) return;
    tsfn_ = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "img-runner", 0, 1);
    machine_ = std::make_unique<Machine>(
        std::move(spec), [this] { post(new Message{}); }, [this](const ExitInfo& e) { post(new Message{true, e}); });
    std::string err;
    PrepareError pe = machine_->prepare(err);
    if (pe != PrepareError::None) {
      machine_.reset();
      tsfn_.Release();
      const char* code = pe == PrepareError::NoKvm ? "NO_KVM" : pe == PrepareError::BadKernel ? "BAD_KERNEL"
                         : pe == PrepareError::NoMemory ? "NO_MEMORY" : "BAD_CONFIG";
      Napi::Error e = Napi::Error::New(env, err);
      e.Set("code", Napi::String::New(env, code));
      e.ThrowAsJavaScriptException();
      return;
    }
    Ref();  // alive until the exit is delivered, even if JS drops the handle
    machine_->start();
  }

  ~RunnerVm() override { machine_.reset(); }

 private:
  static std::string str(Napi::Object o, const char* key) {
    Napi::Value v = o.Get(key);
    return v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  }

  bool parseSpec(Napi::Object c, VmSpec& spec) {
    spec.kernel = str(c, "kernel");
    spec.initrd = str(c, "initrd");
    spec.cmdline = str(c, "cmdline");
    spec.memBytes = static_cast<uint64_t>(c.Get("memoryMiB").ToNumber().Int64Value()) << 20;
    spec.maskXsave = c.Get("maskXsave").ToBoolean();
    Napi::Value disks = c.Get("disks");
    if (disks.IsArray()) {
      Napi::Array a = disks.As<Napi::Array>();
      for (uint32_t i = 0; i < a.Length(); i++) {
        Napi::Object d = a.Get(i).As<Napi::Object>();
        DiskSpec s;
        s.nbd = str(d, "kind") == "nbd";
        s.path = str(d, "path");
        s.socket = str(d, "socket");
        s.host = str(d, "host");
        s.exportName = str(d, "exportName");
        s.port = d.Get("port").IsNumber() ? d.Get("port").ToNumber().Int32Value() : 0;
        s.readOnly = d.Get("readOnly").ToBoolean();
        spec.disks.push_back(s);
      }
    }
    return true;
  }

  // Runner threads: queue a message for the JS thread.
  void post(Message* m) {
    tsfn_.NonBlockingCall(m, [this](Napi::Env env, Napi::Function cb, Message* raw) {
      std::unique_ptr<Message> msg(raw);
      if (env != nullptr) deliver(env, cb, *msg);
    });
  }

  // JS thread: a console batch, or the exit once the threads are joined.
  void deliver(Napi::Env env, Napi::Function cb, const Message& msg) {
    std::string bytes = machine_ ? machine_->takeConsole() : "";
    if (!bytes.empty()) cb.Call({Napi::String::New(env, "console"), Napi::Buffer<char>::Copy(env, bytes.data(), bytes.size())});
    if (!msg.exit || !machine_) return;
    machine_->join();
    machine_.reset();  // closes every fd and unmaps guest RAM
    tsfn_.Release();
    cb.Call({Napi::String::New(env, "exit"), Napi::String::New(env, msg.info.reason), Napi::Number::New(env, msg.info.code),
             Napi::String::New(env, msg.info.message)});
    Unref();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    std::string reason = info.Length() > 0 && info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "stopped";
    if (machine_) machine_->requestExit(reason == "timeout" ? "timeout" : "stopped", reason == "timeout" ? 3 : 2, "");
    return info.Env().Undefined();
  }

  Napi::Value SendConsole(const Napi::CallbackInfo& info) {
    if (machine_ && info.Length() > 0 && info[0].IsBuffer()) {
      auto b = info[0].As<Napi::Buffer<uint8_t>>();
      machine_->sendConsole(b.Data(), b.Length());
    }
    return info.Env().Undefined();
  }

  Napi::ThreadSafeFunction tsfn_;
  std::unique_ptr<Machine> machine_;
};

Napi::Value KvmUsable(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), kvmUsable());
}

}  // namespace

void registerRunner(Napi::Env env, Napi::Object exports) {
  exports.Set("RunnerVm", RunnerVm::Define(env));
  exports.Set("kvmUsable", Napi::Function::New(env, KvmUsable));
}

}  // namespace runner
