// SpliceWriter: one connection's outgoing bytes, written by a thread of its own.
//
// JS queues units (an NBD reply: header buffers and file ranges); the thread puts them into a
// pipe — buffers with write(2), file ranges with splice(2), which moves page-cache pages by
// reference — and splices the pipe into the socket. File data so reaches the socket without a
// copy through user space, where pread + write would copy it twice. A unit completes (its token
// goes back to JS) once all its bytes have entered the socket.
//
// The socket is dup'ed: JS may close its own descriptor whenever it likes, and the thread never
// writes to a number the process has reused. Buffers are not copied at queue time; JS keeps
// them alive until their unit completes.
#include <napi.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr int kPipeSize = 1 << 20;  // the default pipe-max-size: allowed without privileges
constexpr size_t kBounceSize = 1 << 20;

struct Segment {
  const uint8_t* data;  // a buffer, or nullptr for a file range
  int fd;
  int64_t position;
  size_t length;
};

struct Unit {
  uint32_t token;
  std::vector<Segment> segments;
};

struct Completions {
  std::vector<uint32_t> tokens;
  std::string error;  // set once: every later unit fails too
  bool closed = false;
};

struct Writer {
  int sock = -1;
  int pipeRead = -1, pipeWrite = -1;
  int wake = -1;  // eventfd: abort() interrupts a wait for the socket
  std::thread thread;
  std::mutex m;
  std::condition_variable cv;
  std::deque<Unit> queue;
  bool ending = false, aborting = false;
  bool busy = false;                 // the thread owns the socket: it took units and has not drained them
  std::atomic<bool> broken{false};   // a unit failed: nothing more may be written
  Napi::ThreadSafeFunction tsfn;

  // Thread state.
  size_t inPipe = 0;
  uint64_t queued = 0, sent = 0;                      // bytes put into the pipe, bytes spliced out
  std::deque<std::pair<uint32_t, uint64_t>> marks;    // unit token, stream position of its end
  std::vector<uint8_t> bounce;
  std::string error;

  ~Writer() { CloseFiles(); }

  // The socket's last descriptor may be this one: closing it lets the client see the end.
  void CloseFiles() {
    for (int* fd : {&sock, &pipeRead, &pipeWrite}) {
      if (*fd >= 0) close(*fd);
      *fd = -1;
    }
  }

  void Fail(const char* what, int err) {
    broken = true;
    if (error.empty()) error = std::string(what) + ": " + strerror(err);
  }

  // Sends the tokens of units whose bytes have all left the pipe, and the error if any.
  void ReportDone(bool closed) {
    bool due = !marks.empty() && (marks.front().second <= sent || !error.empty());
    if (!due && !closed && error.empty()) return;
    auto* r = new Completions();
    while (!marks.empty() && (marks.front().second <= sent || !error.empty())) {
      r->tokens.push_back(marks.front().first);
      marks.pop_front();
    }
    r->error = error;
    r->closed = closed;
    tsfn.BlockingCall(r, [](Napi::Env env, Napi::Function fn, Completions* rep) {
      Napi::Array tokens = Napi::Array::New(env, rep->tokens.size());
      for (size_t i = 0; i < rep->tokens.size(); i++) tokens.Set(i, rep->tokens[i]);
      fn.Call({tokens, rep->error.empty() ? env.Undefined() : Napi::String::New(env, rep->error),
               Napi::Boolean::New(env, rep->closed)});
      delete rep;
    });
  }

  bool Aborted() {
    std::lock_guard<std::mutex> lock(m);
    return aborting;
  }

  // Splices the whole pipe into the socket, waiting for room there as needed.
  bool Drain() {
    while (inPipe > 0) {
      ssize_t n = splice(pipeRead, nullptr, sock, nullptr, inPipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        inPipe -= n;
        sent += n;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno != EAGAIN) {
        Fail("writing to the client", errno);
        return false;
      }
      ReportDone(false);  // the client is slower than us: hand back what it has taken so far
      pollfd fds[2] = {{sock, POLLOUT, 0}, {wake, POLLIN, 0}};
      if (poll(fds, 2, -1) < 0 && errno != EINTR) {
        Fail("waiting for the client", errno);
        return false;
      }
      if (fds[1].revents & POLLIN) {
        Fail("writing to the client", ECONNABORTED);
        return false;
      }
    }
    return true;
  }

  bool PutBytes(const uint8_t* p, size_t len) {
    while (len > 0) {
      ssize_t n = write(pipeWrite, p, len);
      if (n > 0) {
        p += n;
        len -= n;
        inPipe += n;
        queued += n;
      } else if (n < 0 && errno == EAGAIN) {
        if (!Drain()) return false;
      } else if (!(n < 0 && errno == EINTR)) {
        Fail("writing to the pipe", errno);
        return false;
      }
    }
    return true;
  }

  // A file range; past end-of-file it reads as zeroes (as HostFile reads do).
  bool PutFile(const Segment& s) {
    int64_t pos = s.position;
    size_t len = s.length;
    while (len > 0) {
      ssize_t n = splice(s.fd, &pos, pipeWrite, nullptr, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        len -= n;
        inPipe += n;
        queued += n;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN && inPipe > 0) {
        if (!Drain()) return false;
        continue;
      }
      if (n == 0) {  // end of file
        bounce.assign(std::min(len, kBounceSize), 0);
        while (len > 0) {
          size_t k = std::min(len, bounce.size());
          if (!PutBytes(bounce.data(), k)) return false;
          len -= k;
        }
        return true;
      }
      if (n < 0 && errno != EINVAL && errno != EAGAIN) {
        Fail("reading the image", errno);
        return false;
      }
      // The file system cannot splice: copy through a buffer instead.
      bounce.resize(kBounceSize);
      ssize_t r = pread(s.fd, bounce.data(), std::min(len, kBounceSize), pos);
      if (r < 0) {
        if (errno == EINTR) continue;
        Fail("reading the image", errno);
        return false;
      }
      if (r == 0) continue;  // end of file: handled above on the next turn
      if (!PutBytes(bounce.data(), r)) return false;
      pos += r;
      len -= r;
    }
    return true;
  }

  void Run() {
    std::deque<Unit> batch;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(m);
        cv.wait(lock, [&] { return !queue.empty() || ending || aborting; });
        if (aborting) Fail("writing to the client", ECONNABORTED);
        if (queue.empty()) break;
        batch.swap(queue);
        busy = true;
      }
      for (Unit& u : batch) {
        for (const Segment& s : u.segments) {
          if (!error.empty()) break;
          if (s.data ? !PutBytes(s.data, s.length) : !PutFile(s)) break;
        }
        marks.emplace_back(u.token, queued);
      }
      batch.clear();
      if (error.empty()) Drain();
      {
        std::lock_guard<std::mutex> lock(m);
        busy = false;
      }
      ReportDone(false);
      if (Aborted()) break;
    }
    std::deque<Unit> rest;
    {
      std::lock_guard<std::mutex> lock(m);
      rest.swap(queue);
    }
    for (Unit& u : rest) marks.emplace_back(u.token, UINT64_MAX);
    if (!rest.empty() && error.empty()) Fail("writing to the client", ECONNABORTED);
    CloseFiles();
    ReportDone(true);
    tsfn.Release();
  }
};

class SpliceWriter : public Napi::ObjectWrap<SpliceWriter> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "SpliceWriter", {InstanceMethod("send", &SpliceWriter::Send), InstanceMethod("end", &SpliceWriter::End),
                                             InstanceMethod("abort", &SpliceWriter::Abort)});
  }

  // new SpliceWriter(socketFd, onReport(tokens, error?, closed))
  explicit SpliceWriter(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SpliceWriter>(info), w_(std::make_shared<Writer>()) {
    Napi::Env env = info.Env();
    int fds[2];
    w_->sock = fcntl(info[0].As<Napi::Number>().Int32Value(), F_DUPFD_CLOEXEC, 0);
    if (w_->sock < 0 || pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0 || (w_->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
      Napi::Error::New(env, std::string("SpliceWriter: ") + strerror(errno)).ThrowAsJavaScriptException();
      return;
    }
    w_->pipeRead = fds[0];
    w_->pipeWrite = fds[1];
    fcntl(w_->pipeWrite, F_SETPIPE_SZ, kPipeSize);  // best effort: a smaller pipe only means more splices
    // Finalized on the JS thread after the thread's last report: joining then waits for nothing.
    w_->tsfn = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "img-splice", 0, 1, w_.get(),
                                             [keep = w_](Napi::Env, Writer* w) {
                                               w->thread.join();
                                               std::lock_guard<std::mutex> lock(w->m);
                                               close(w->wake);
                                               w->wake = -1;
                                             });
    w_->thread = std::thread([w = w_.get()] { w->Run(); });
  }

  // JS dropped the writer without end() or abort(): stop the thread, or it would wait forever.
  ~SpliceWriter() { Stop(); }

 private:
  void Stop() {
    std::lock_guard<std::mutex> lock(w_->m);
    w_->aborting = true;
    uint64_t one = 1;
    if (w_->wake >= 0 && write(w_->wake, &one, sizeof one) < 0) {
      // The counter cannot overflow from one write: nothing to do.
    }
    w_->cv.notify_one();
  }

  // send(batch): units one after the other, each as token, part count, parts; a part is a
  // Uint8Array, or three numbers fd, position, length for a file range.
  Napi::Value Send(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Array batch = info[0].As<Napi::Array>();
    std::deque<Unit> units;
    auto number = [&](uint32_t i) { return i < batch.Length() ? batch.Get(i).As<Napi::Number>().Int64Value() : -1; };
    for (uint32_t i = 0; i < batch.Length();) {
      Unit u{static_cast<uint32_t>(number(i)), {}};
      int64_t count = number(i + 1);
      i += 2;
      for (int64_t k = 0; k < count && i < batch.Length(); k++) {
        Napi::Value p = batch.Get(i);
        if (p.IsTypedArray()) {
          auto a = p.As<Napi::Uint8Array>();
          if (a.ByteLength() > 0) u.segments.push_back({a.Data(), -1, 0, a.ByteLength()});
          i += 1;
        } else {
          int64_t fd = number(i), position = number(i + 1), length = number(i + 2);
          if (fd < 0 || position < 0 || length < 0) {
            Napi::TypeError::New(env, "SpliceWriter: bad file range").ThrowAsJavaScriptException();
            return env.Undefined();
          }
          if (length > 0) u.segments.push_back({nullptr, static_cast<int>(fd), position, static_cast<size_t>(length)});
          i += 3;
        }
      }
      units.push_back(std::move(u));
    }
    std::vector<uint32_t> sent;
    {
      std::lock_guard<std::mutex> lock(w_->m);
      if (w_->ending || w_->aborting) {
        Napi::Error::New(env, "SpliceWriter: send after end").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      for (Unit& u : units) {
        if (w_->queue.empty() && !w_->busy && !w_->broken && WriteNow(u)) {
          sent.push_back(u.token);
          continue;
        }
        w_->queue.push_back(std::move(u));
      }
      if (!w_->queue.empty()) w_->cv.notify_one();
    }
    Napi::Array tokens = Napi::Array::New(env, sent.size());
    for (size_t i = 0; i < sent.size(); i++) tokens.Set(i, sent[i]);
    return tokens;
  }

  // With the thread idle, a unit of buffers alone (most replies but reads) is written at once:
  // handing it over would cost a wake-up worth more than the write. True when all of it went;
  // otherwise the unit keeps what is left, for the thread.
  bool WriteNow(Unit& u) {
    iovec iov[64];
    if (u.segments.size() > 64) return false;
    size_t total = 0;
    for (size_t i = 0; i < u.segments.size(); i++) {
      if (!u.segments[i].data) return false;
      iov[i] = {const_cast<uint8_t*>(u.segments[i].data), u.segments[i].length};
      total += u.segments[i].length;
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = u.segments.size();
    ssize_t n = sendmsg(w_->sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) return false;  // the thread will wait for room, or meet the error and report it
    if (static_cast<size_t>(n) == total) return true;
    while (n > 0) {
      Segment& s = u.segments.front();
      size_t k = std::min(static_cast<size_t>(n), s.length);
      s.data += k;
      s.length -= k;
      n -= k;
      if (s.length == 0) u.segments.erase(u.segments.begin());
    }
    return false;
  }

  // end(): the thread sends what is queued, reports closed and exits.
  Napi::Value End(const Napi::CallbackInfo& info) {
    std::lock_guard<std::mutex> lock(w_->m);
    w_->ending = true;
    w_->cv.notify_one();
    return info.Env().Undefined();
  }

  // abort(): the thread stops at once; units not yet sent fail.
  Napi::Value Abort(const Napi::CallbackInfo& info) {
    Stop();
    return info.Env().Undefined();
  }

  std::shared_ptr<Writer> w_;
};

}  // namespace

Napi::Object InitSpliceWriter(Napi::Env env, Napi::Object exports) {
  exports.Set("SpliceWriter", SpliceWriter::Define(env));
  return exports;
}
