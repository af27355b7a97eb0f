// Adds the runner's exports (RunnerVm, kvmUsable) to the addon's exports.
#pragma once
#include <napi.h>

namespace runner {
void registerRunner(Napi::Env env, Napi::Object exports);
}
